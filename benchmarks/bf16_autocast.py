"""bf16 autocast vs fp32 on the CPU: step-time ratio and accuracy agreement.

Interleaves fp32 and bf16 training steps of the same soft prompt (A B A B) and
scores a trained prompt file both ways on held-out sentences, so the speed
claim and the accuracy cost come from one run.

    python benchmarks/bf16_autocast.py --prompt runs/movie-sentiment/prompt.safetensors
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from softprompt.api import build_model, load_prompt
from softprompt.backbones import load_backbone
from softprompt.data import load_dataset
from softprompt.evaluate import evaluate
from softprompt.train.sampler import micro_batch


def step_seconds(model, rows, bf16: bool) -> float:
    tick = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(model.collate(rows)).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", required=True, help="a trained movie-sentiment prompt file")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-examples", type=int, default=300)
    args = parser.parse_args()

    backbone = load_backbone("smollm2-135m")
    data = load_dataset("movie-sentiment")
    model = build_model(backbone, data, {"name": "soft-prompt", "n_tokens": 20}, {})
    times = {"fp32": [], "bf16": []}
    for step in range(args.steps):
        rows = micro_batch(data.train, 8, 0, step)
        order = [("fp32", False), ("bf16", True)]
        for name, bf16 in order if step % 2 == 0 else order[::-1]:
            times[name].append(step_seconds(model, rows, bf16))
    tuned = load_prompt(args.prompt, backbone)
    held_out = data.test[: args.eval_examples]
    acc, eval_times = {}, {"fp32": [], "bf16": []}
    for name, bf16 in (("fp32", False), ("bf16", True), ("bf16", True), ("fp32", False)):  # A B B A
        tick = time.perf_counter()
        acc[name] = evaluate(tuned, held_out, bf16=bf16)["accuracy"]
        eval_times[name].append(time.perf_counter() - tick)
    acc = {k: (v, statistics.mean(eval_times[k])) for k, v in acc.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"median_step_seconds": med, "eval": acc}, indent=2))
    print("| | fp32 | bf16 | fp32 / bf16 |\n|---|---|---|---|")
    print(
        f"| median train step (batch 8) | {med['fp32']:.3f} s | {med['bf16']:.3f} s | {med['fp32'] / med['bf16']:.2f}x |"
    )
    print(
        f"| eval time ({len(held_out)} test) | {acc['fp32'][1]:.1f} s | {acc['bf16'][1]:.1f} s | {acc['fp32'][1] / acc['bf16'][1]:.2f}x |"
    )
    print(f"| test accuracy | {acc['fp32'][0]:.3f} | {acc['bf16'][0]:.3f} | |")


if __name__ == "__main__":
    main()
