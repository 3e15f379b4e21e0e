"""Where one mixed window of the serving benchmark spends its time (torch profiler).

The same 8 SmolLM2 tasks and movie-sentiment requests as serve_throughput.py; one
window run through the engine with rows packed and with packing off, each profiled
after a warm-up. Prints the top operators and writes their shares of self CPU time.

    OMP_NUM_THREADS=1 python benchmarks/serve_profile.py --window 16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from serve_throughput import TASKS, build  # noqa: E402

from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.serve.engine import Engine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/results/serve_profile.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    backbone = load_backbone(args.backbone)
    data = load_dataset("movie-sentiment")
    store, _ = build(backbone, data, Path(tempfile.mkdtemp(prefix="serve-profile-")))
    rng = random.Random(0)
    texts = [e.text for e in data.test]
    window = [(f"task{rng.randrange(TASKS)}", rng.choice(texts)) for _ in range(args.window)]
    result = {"backbone": args.backbone, "window": args.window}
    for name, pack in (("packed", 128), ("padded", None)):
        engine = Engine(backbone, store, cache_bytes=256 << 20, pack_tokens=pack)
        engine.load_all()
        tick = time.perf_counter()
        requests = [engine.request(t, x, generate=False) for t, x in window]
        checking = time.perf_counter() - tick  # tokenizing and checking every request
        engine.run(requests)  # warm: prompt K/V cached
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            engine.run(requests)
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in ops)
        print(f"{name}: {sum(r.tokens for r in requests)} real tokens")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
        result[name] = {
            "request_checks_seconds": checking,
            "self_cpu_share": {e.key: e.self_cpu_time_total / total for e in ops[:10]},
        }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
