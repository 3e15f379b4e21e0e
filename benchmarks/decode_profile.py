"""Where our own engine's decoding loop spends its time (torch profiler), per token.

The generation workload of vllm_parity.py (SmolLM2, its seeded "story" soft prompt,
`--concurrency` movie-sentiment sentences, `--max-tokens` greedy tokens, one
`Engine.run`), after a warm-up. Profiles the decoding loop only (`inject.decode._loop`:
every step after the prefill, the LM head included), with the frozen weights
oneDNN-packed (the engine as served) and on plain weights (`pack_weights=False`), and
prints each one's top operators by self CPU time and their share, and ms per step.
First, GFLOPS of one (rows, 576) x (576, 1536) product (SmolLM2's MLP shape) on plain
weights (`F.linear`, MKL) and on the oneDNN-packed weight, at a few row counts.

    OMP_NUM_THREADS=1 python benchmarks/decode_profile.py --concurrency 16 --max-tokens 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from vllm_parity import prompts

import softprompt.inject.decode as decode_module
from softprompt.backbones import load_backbone
from softprompt.data import load_dataset
from softprompt.serve.engine import Engine
from softprompt.serve.store import PromptStore


def profiled_loop(engine: Engine, texts: list[str], max_tokens: int) -> dict:
    """Top operators of the decoding loop of one engine call: name -> self CPU ms."""
    loop, found = decode_module._loop, {}

    def watched(*args, **kwargs):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = loop(*args, **kwargs)
        found["prof"] = prof
        return out

    decode_module._loop = watched
    try:
        engine.run(
            [engine.request("story", t, generate=True, max_tokens=max_tokens) for t in texts]
        )
    finally:
        decode_module._loop = loop
    events = found["prof"].key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1000
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    ops = {e.key: round(e.self_cpu_time_total / 1000, 1) for e in top}
    share = {k: round(ms / total, 3) for k, ms in ops.items()}
    return {"self_cpu_ms": round(total, 1), "top_ms": ops, "top_share": share}


def gemm_rates(rows=(1, 16, 64, 256), repeats: int = 50) -> dict:
    """rows -> GFLOPS of F.linear (plain) and of the packed product, medians of 3 runs."""
    weight, out = torch.randn(1536, 576), {}
    packed = torch.ops.mkldnn._reorder_linear_weight(weight)

    def rate(fn, x) -> float:
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(repeats):
                fn(x)
            runs.append(2 * x.shape[0] * 576 * 1536 * repeats / (time.perf_counter() - start))
        return round(statistics.median(runs) / 1e9, 1)

    def on_packed(x):
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")

    for m in rows:
        x = torch.randn(m, 576)
        out[m] = {"plain": rate(lambda x: F.linear(x, weight), x), "packed": rate(on_packed, x)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/results/decode_profile.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    backbone = load_backbone(args.backbone)
    texts = [e.text for e in load_dataset("movie-sentiment").test][: args.concurrency]
    report = {"args": vars(args), "gemm_gflops": gemm_rates()}
    with tempfile.TemporaryDirectory() as tmp:
        store = PromptStore(Path(tmp) / "store")
        for task, (_, path) in prompts(backbone, Path(tmp)).items():
            store.add(task, path)
        for name, packs in (("packed_weights", True), ("plain_weights", False)):
            engine = Engine(backbone, store, pack_weights=packs)
            engine.load_all()
            engine.run([engine.request("story", t, generate=True) for t in texts])  # warm
            report[name] = found = profiled_loop(engine, texts, args.max_tokens)
            found["cpu_ms_per_step"] = round(found["self_cpu_ms"] / args.max_tokens, 1)
    print(json.dumps(report, indent=1))
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
