"""Generation on our own engine: contexts packed end to end before decoding vs padded.

8 generation tasks on one SmolLM2 (soft prompts of `--n-tokens`, seeded vocab inits),
windows of `--window` concurrent requests (movie-sentiment test sentences), each asking
for `--max-tokens` greedy tokens. Per window, interleaved (the order rotates):

  packed  the engine as served: the contexts run packed end to end without padding
          (inject/packing.py), then each row decodes from its own prompt's and
          context's K/V gathered into one cache (inject/decode.py `decode_packed`)
  padded  the same engine with packing off: the contexts left-padded to the longest
          (the decoding loop as it was before packing)

Prints median seconds per window (wall clock and this process's CPU seconds), generated
tokens per second and the ratio, and checks that both give the same text for every
request.

    OMP_NUM_THREADS=1 python benchmarks/serve_generation.py --windows 3 --window 16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.model import PromptModel  # noqa: E402
from softprompt.serve.engine import Engine  # noqa: E402
from softprompt.serve.store import PromptStore  # noqa: E402
from softprompt.tasks import TaskConfig  # noqa: E402

TASKS = 8


def build_store(backbone, folder: Path, n_tokens: int, max_tokens: int) -> PromptStore:
    store = PromptStore(folder / "store")
    config = TaskConfig(
        kind="generation", template="Review: {text}\nSummary:", max_new_tokens=max_tokens
    )
    for i in range(TASKS):
        options = {"n_tokens": n_tokens, "init": "vocab", "seed": i}
        model = PromptModel(backbone, config, method="soft-prompt", method_options=options)
        store.add(f"task{i}", model.save(folder / f"task{i}.safetensors"))
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--n-tokens", type=int, default=20, help="soft prompt length per task")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/serve_generation.json")
    args = parser.parse_args()
    if min(args.windows, args.window, args.max_tokens, args.n_tokens) < 1:
        parser.error("--windows, --window, --max-tokens and --n-tokens: positive integers")
    torch.set_num_threads(args.threads)
    backbone = load_backbone(args.backbone)
    texts = [e.text for e in load_dataset("movie-sentiment").test]
    store = build_store(
        backbone, Path(tempfile.mkdtemp(prefix="gen-bench-")), args.n_tokens, args.max_tokens
    )
    engines = {
        "packed": Engine(backbone, store),
        "padded": Engine(backbone, store, pack_tokens=None),
    }
    for engine in engines.values():
        engine.load_all()
        engine.run([engine.request(f"task{i}", "warm up", generate=True) for i in range(TASKS)])
    rng = random.Random(0)
    stream = [
        [(f"task{rng.randrange(TASKS)}", rng.choice(texts)) for _ in range(args.window)]
        for _ in range(args.windows)
    ]
    wall: dict[str, list[float]] = {n: [] for n in engines}
    cpu: dict[str, list[float]] = {n: [] for n in engines}
    tokens: dict[str, int] = dict.fromkeys(engines, 0)
    same = True
    for w, window in enumerate(stream):
        order = list(engines)[w % 2 :] + list(engines)[: w % 2]
        answers = {}
        for name in order:
            engine = engines[name]
            requests = [engine.request(t, x, generate=True) for t, x in window]
            start, start_cpu = time.perf_counter(), time.process_time()
            answers[name] = engine.run(requests)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            tokens[name] += sum(r["tokens"] for r in answers[name])
        same &= [r["text"] for r in answers["packed"]] == [r["text"] for r in answers["padded"]]
        print(f"window {w}: " + "  ".join(f"{n} {wall[n][-1]:.2f}s" for n in engines))
    result = {"args": vars(args), "same_text": same}
    for name in engines:
        result[name] = {
            "median_s": statistics.median(wall[name]),
            "median_cpu_s": statistics.median(cpu[name]),
            "tokens_per_s": tokens[name] / sum(wall[name]),
        }
    ratio = result["padded"]["median_s"] / result["packed"]["median_s"]
    ratio_cpu = result["padded"]["median_cpu_s"] / result["packed"]["median_cpu_s"]
    result["speedup_packed_over_padded"] = {"wall": ratio, "cpu": ratio_cpu}
    for name in engines:
        r = result[name]
        print(f"{name}: {r['median_s']:.2f}s/window ({r['median_cpu_s']:.2f} CPU s), "
              f"{r['tokens_per_s']:.1f} tokens/s")  # fmt: skip
    print(f"packed vs padded: {ratio:.2f}x wall, {ratio_cpu:.2f}x CPU; same text: {same}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
