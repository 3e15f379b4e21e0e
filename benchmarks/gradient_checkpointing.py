"""Gradient checkpointing on SmolLM2: the memory it saves and the time it costs.

For a soft prompt and for prefix tuning (MLP-reparameterized), one model each on the
frozen SmolLM2-135M and movie-sentiment batches; every step runs the same batch with and
without `train.gradient_checkpointing` (inject/checkpointing.py), alternating which goes
first, and the script prints the step-time ratio. Gradients of the two are compared on
the first batch (the largest absolute difference). Peak memory: each variant runs a few
training steps in a fresh child process that reports its peak-RSS growth over the
loaded model (PEFT cannot take part: it refuses prefix tuning with checkpointing, #869).

    OMP_NUM_THREADS=1 python benchmarks/gradient_checkpointing.py --steps 12
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.inject.checkpointing import layer_checkpointing  # noqa: E402
from softprompt.train.sampler import micro_batch  # noqa: E402

METHODS = {
    "soft-prompt": {"name": "soft-prompt", "n_tokens": 20, "init": "vocab"},
    "prefix-tuning": {"name": "prefix-tuning", "n_tokens": 20, "init": "vocab"},
}


def setup(backbone_name: str, method: str):
    backbone = load_backbone(backbone_name)
    data = load_dataset("movie-sentiment")
    return build_model(backbone, data, METHODS[method], {}), data


def step(model, rows, checkpointing: bool, optimizer) -> float:
    tick = time.perf_counter()
    with layer_checkpointing(model.backbone, checkpointing):
        loss = model(model.collate(rows)).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - tick


def gradient_gap(model, rows) -> float:
    grads = []
    for checkpointing in (False, True):
        with layer_checkpointing(model.backbone, checkpointing):
            model(model.collate(rows)).loss.backward()
        grads.append([p.grad.clone() for p in model.trainable_parameters()])
        model.zero_grad(set_to_none=True)
    return max(float((a - b).abs().max()) for a, b in zip(*grads, strict=True))


def _peak_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("VmHWM not in /proc/self/status")


def child(args) -> None:
    """Fresh process: peak-RSS growth of a few training steps of one variant."""
    model, data = setup(args.backbone, args.method)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
    base = _peak_kb()
    for i in range(args.memory_steps):
        step(model, micro_batch(data.train, args.batch, 0, i), args.child == "on", optimizer)
    print(json.dumps({"rss_growth_mb": (_peak_kb() - base) / 1024}))


def peak_memory(args, method: str) -> dict[str, float]:
    out = {}
    for mode in ("off", "on"):
        command = [sys.executable, __file__, "--child", mode, "--method", method]
        command += ["--backbone", args.backbone, "--batch", str(args.batch)]
        command += ["--memory-steps", str(args.memory_steps)]
        proc = subprocess.run(command, capture_output=True, text=True, check=True)
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])["rss_growth_mb"]
    return out


def measure(args, method: str) -> dict:
    torch.manual_seed(0)
    model, data = setup(args.backbone, method)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    gap = gradient_gap(model, micro_batch(data.train, args.batch, 0, 0))
    times: dict[str, list[float]] = {"off": [], "on": []}
    for i in range(args.steps):
        rows = micro_batch(data.train, args.batch, 0, i)
        for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
            times[mode].append(step(model, rows, mode == "on", optimizer))
    med = {mode: statistics.median(t) for mode, t in times.items()}
    memory = peak_memory(args, method)
    return {
        "median_step_seconds": med,
        "time_ratio_on_over_off": med["on"] / med["off"],
        "peak_rss_growth_mb": memory,
        "memory_saved_fraction": 1 - memory["on"] / memory["off"],
        "max_gradient_difference": gap,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--child", choices=["off", "on"])
    parser.add_argument("--method", choices=list(METHODS))
    parser.add_argument("--out", default="benchmarks/results/gradient_checkpointing.json")
    args = parser.parse_args()
    if args.child:
        return child(args)
    result = {
        "backbone": args.backbone,
        "batch_size": args.batch,
        "steps": args.steps,
        "torch_threads": torch.get_num_threads(),
        "methods": {},
    }
    for method in args.methods:
        result["methods"][method] = measure(args, method)
        print(method, json.dumps(result["methods"][method]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n| method | step, off | step, on | time ratio | peak RSS growth off / on | saved |")
    print("|---|---|---|---|---|---|")
    for method, r in result["methods"].items():
        med, mem = r["median_step_seconds"], r["peak_rss_growth_mb"]
        print(
            f"| {method} | {med['off']:.2f} s | {med['on']:.2f} s | "
            f"{r['time_ratio_on_over_off']:.2f}x | {mem['off']:.0f} / {mem['on']:.0f} MB | "
            f"{r['memory_saved_fraction']:.0%} |"
        )


if __name__ == "__main__":
    main()
