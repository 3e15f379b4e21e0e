"""Latency of one classify request: a 20-token cached prompt vs no prompt at all.

On SmolLM2-135M, the same movie-sentiment sentence classified through the serving
engine three ways, interleaved request by request (the order rotates):

  none     the template and label words only (method `none`: BOS, no virtual tokens)
  cached   a 20-token soft prompt whose keys/values come from the per-task cache
  uncached the same prompt with the cache bound at 0: its 21 slots re-run each request

A front prompt's K/V do not depend on the input, so `cached` adds only 20 attention
keys per layer to `none`; `uncached` adds a forward pass of 21 tokens. Prints medians
and the ratios (target: cached / none <= 1.10).

    python benchmarks/serve_latency.py --rounds 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.serve.engine import Engine  # noqa: E402
from softprompt.serve.store import PromptStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/serve_latency.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    backbone = load_backbone(args.backbone)
    data = load_dataset("movie-sentiment")
    folder = Path(tempfile.mkdtemp(prefix="serve-latency-"))
    store = PromptStore(folder / "store")
    soft = {"name": "soft-prompt", "n_tokens": 20, "init": "vocab"}
    for task, method in [("prompted", soft), ("none", {"name": "none"})]:
        model = build_model(backbone, data, method, {})
        store.add(task, model.save(folder / f"{task}.safetensors"))
    cached = Engine(backbone, store, cache_bytes=64 << 20)
    uncached = Engine(backbone, store, cache_bytes=0)
    for engine in (cached, uncached):
        engine.load_all()
    text = data.test[0].text
    arms = {
        "none": lambda: cached.run([cached.request("none", text, generate=False)]),
        "cached": lambda: cached.run([cached.request("prompted", text, generate=False)]),
        "uncached": lambda: uncached.run([uncached.request("prompted", text, generate=False)]),
    }
    for arm in arms.values():  # warm-up: fills the cache, first-call costs
        arm()
    times: dict[str, list[float]] = {a: [] for a in arms}
    cpu_times: dict[str, list[float]] = {a: [] for a in arms}  # this process's CPU seconds
    order = list(arms)
    for k in range(args.rounds):
        for arm in order[k % 3 :] + order[: k % 3]:
            tick, cpu = time.perf_counter(), time.process_time()
            arms[arm]()
            times[arm].append(time.perf_counter() - tick)
            cpu_times[arm].append(time.process_time() - cpu)
    med = {a: statistics.median(t) for a, t in times.items()}
    cpu = {a: statistics.median(t) for a, t in cpu_times.items()}
    tokens = len(backbone.tokenizer(text, add_special_tokens=False)["input_ids"])
    result = {
        "backbone": args.backbone,
        "text_tokens": tokens,
        "rounds": args.rounds,
        "threads": args.threads,
        "median_seconds": med,
        "median_cpu_seconds": cpu,
        "cached_over_none": med["cached"] / med["none"],
        "cached_over_none_cpu": cpu["cached"] / cpu["none"],
        "uncached_over_none": med["uncached"] / med["none"],
        "cache_hits": cached.cache.hits,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
