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

With `--stagger MS` the window's requests arrive one every MS milliseconds instead,
through the server's batcher (serve/batcher.py, in this process), and the arms are:

  batch       `Engine(continuous=False)`: a decode runs the requests that arrived
              together; later ones wait for it to end (the engine before issue 20's
              continuous batching)
  continuous  the engine as served: requests arriving mid-decode join it at its next
              step, each answered when its own tokens are done

Per round (interleaved, the order rotates): mean and p95 latency (arrival to answer),
throughput (generated tokens / first arrival to last answer), this process's CPU time
per generated token, each round's ratios and their median, and whether both arms gave
every request the same text.

    OMP_NUM_THREADS=1 python benchmarks/serve_generation.py --stagger 100 --windows 3 \
        --window 32 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
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
from softprompt.serve.batcher import Batcher  # noqa: E402
from softprompt.serve.engine import Engine  # noqa: E402
from softprompt.serve.metrics import Metrics  # noqa: E402
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
    parser.add_argument("--stagger", type=float, default=None, metavar="MS",
                        help="requests arrive one every MS ms: batch vs continuous")  # fmt: skip
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if min(args.windows, args.window, args.max_tokens, args.n_tokens) < 1:
        parser.error("--windows, --window, --max-tokens and --n-tokens: positive integers")
    if args.stagger is not None and args.stagger < 0:
        parser.error("--stagger: milliseconds, 0 or more")
    torch.set_num_threads(args.threads)
    backbone = load_backbone(args.backbone)
    texts = [e.text for e in load_dataset("movie-sentiment").test]
    store = build_store(
        backbone, Path(tempfile.mkdtemp(prefix="gen-bench-")), args.n_tokens, args.max_tokens
    )
    if args.stagger is not None:
        staggered(args, backbone, store, texts)
        return
    args.out = args.out or "benchmarks/results/serve_generation.json"
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


async def _round(engine: Engine, window, every_s: float, max_tokens: int):
    """The window's requests sent one every `every_s` through a batcher: per request
    (latency, answer), and the seconds from the first arrival to the last answer."""
    batcher = Batcher(engine, Metrics())
    batcher.start()
    start = time.perf_counter()

    async def one(k: int, task: str, text: str):
        await asyncio.sleep(max(0.0, start + k * every_s - time.perf_counter()))
        sent = time.perf_counter()
        request = engine.request(task, text, generate=True, max_tokens=max_tokens)
        answer = (await batcher.submit([request]))[0]
        return time.perf_counter() - sent, answer

    answers = await asyncio.gather(*(one(k, t, x) for k, (t, x) in enumerate(window)))
    span = time.perf_counter() - start
    await batcher.stop()
    return answers, span


def staggered(args, backbone, store: PromptStore, texts: list[str]) -> None:
    """`--stagger`: batch-then-wait against continuous batching, interleaved rounds."""
    engine = Engine(backbone, store)
    engine.load_all()
    engine.run([engine.request(f"task{i}", "warm up", generate=True) for i in range(TASKS)])
    rng = random.Random(0)
    arms = {"batch": False, "continuous": True}
    rounds: dict[str, list[dict]] = {arm: [] for arm in arms}
    same = True
    for w in range(args.windows):
        window = [(f"task{rng.randrange(TASKS)}", rng.choice(texts)) for _ in range(args.window)]
        order = list(arms)[w % 2 :] + list(arms)[: w % 2]
        got = {}
        for arm in order:
            engine.continuous = arms[arm]
            cpu = time.process_time()
            answers, span = asyncio.run(
                _round(engine, window, args.stagger / 1000, args.max_tokens)
            )
            cpu = time.process_time() - cpu
            latency = sorted(a for a, _ in answers)
            got[arm] = [r["text"] for _, r in answers]
            rounds[arm].append({
                "mean_s": statistics.mean(latency),
                "p95_s": latency[math.ceil(0.95 * len(latency)) - 1],
                "tokens_per_s": sum(r["tokens"] for _, r in answers) / span,
                "cpu_ms_per_token": 1000 * cpu / sum(r["tokens"] for _, r in answers),
            })  # fmt: skip
        same &= got["batch"] == got["continuous"]
        print(f"round {w}: " + "  ".join(
            f"{a} mean {r[-1]['mean_s']:.2f}s p95 {r[-1]['p95_s']:.2f}s "
            f"{r[-1]['tokens_per_s']:.1f} tok/s" for a, r in rounds.items()))  # fmt: skip
    result = {"args": vars(args), "same_text": same}
    for arm, rows in rounds.items():
        result[arm] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    per_round = [  # each round's own ratio: the arms ran back to back, under one load
        {
            "mean_latency_batch_over_continuous": b["mean_s"] / c["mean_s"],
            "p95_latency_batch_over_continuous": b["p95_s"] / c["p95_s"],
            "throughput_continuous_over_batch": c["tokens_per_s"] / b["tokens_per_s"],
            "cpu_per_token_batch_over_continuous": b["cpu_ms_per_token"] / c["cpu_ms_per_token"],
        }
        for b, c in zip(rounds["batch"], rounds["continuous"], strict=True)
    ]
    result["ratios_per_round"] = per_round
    result["ratios"] = {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}
    for name, value in result["ratios"].items():
        rounds_text = ", ".join(f"{r[name]:.2f}" for r in per_round)
        print(f"{name}: {value:.2f}x (median; rounds {rounds_text})")
    print(f"same text in both arms: {same} (medians of {args.windows} rounds)")
    out = Path(args.out or "benchmarks/results/serve_generation_staggered.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
