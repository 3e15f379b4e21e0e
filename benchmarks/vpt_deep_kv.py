"""VPT-deep as per-layer key/value prefixes against the paper's insert-and-discard form.

All sides train the same prompt and head of `vpt-deep` on the real dinov2-small with
fashion-mnist batches; one training step is forward + backward to the prompt and head.
"kv" is softprompt's training step as the image task runs it (inject/vision.py: the
prompt tokens give keys and values only, and since the head reads [CLS] the last layer
computes only [CLS]'s row); "kv, all rows" is the same K/V path computing every row of
the last layer (what the K/V prefix alone buys); "naive" inserts the n prompt tokens
before every layer, runs transformers' own layer on [CLS, prompt, patches] and throws
the prompt's outputs away (`reference_deep_states`). Same batches, interleaved in a
rotating order (A B C, B C A, ...), one process; the first batch checks that all give
the same scores and the same gradients.

    python benchmarks/vpt_deep_kv.py --steps 8 --n-tokens 10 50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.inject.vision import reference_deep_states  # noqa: E402


def naive_scores(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The same model's scores with the deep prompt inserted and discarded per layer."""
    deep = model.method().deep  # (L, 1, n, d)
    states = reference_deep_states(model.injector, deep, batch["pixel_values"])  # (B, 1+N, d)
    return model.task.head(states[:, 0])  # (B, C)


def all_rows_scores(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The K/V path with every row of the last layer computed."""
    states = model.injector.image_states(model.prompt(), batch["pixel_values"])  # (B, 1+N, d)
    return model.task.head(states[:, 0])  # (B, C)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def run(model, data, n_tokens: int, steps: int, batch_size: int) -> dict:
    def kv_step(batch):
        model(batch).loss.backward()

    def all_rows_step(batch):
        loss = torch.nn.functional.cross_entropy(all_rows_scores(model, batch), batch["targets"])
        loss.backward()

    def naive_step(batch):
        torch.nn.functional.cross_entropy(naive_scores(model, batch), batch["targets"]).backward()

    sides = [("kv", kv_step), ("kv_all_rows", all_rows_step), ("naive", naive_step)]
    first = model.collate(data.train[:batch_size])
    with torch.no_grad():
        ours = model(first).scores
        score_diff = max(
            (ours - naive_scores(model, first)).abs().max().item(),
            (ours - all_rows_scores(model, first)).abs().max().item(),
        )
    side_grads = {}
    for name, fn in sides:
        fn(first)
        side_grads[name] = grads(model)
        model.zero_grad(set_to_none=True)
    kv_grads = side_grads["kv"]
    grad_diff = max(
        (kv_grads[k] - side_grads[other][k]).abs().max().item()
        for other in ("kv_all_rows", "naive")
        for k in kv_grads
    )
    grad_scale = max(v.abs().max().item() for v in kv_grads.values())

    times = {name: [] for name, _ in sides}
    for step in range(steps):
        batch = model.collate(data.train[(step + 1) * batch_size : (step + 2) * batch_size])
        turn = step % len(sides)
        for name, fn in sides[turn:] + sides[:turn]:
            tick = time.perf_counter()
            fn(batch)
            model.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - tick)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "n_tokens": n_tokens,
        "kv_s": median["kv"],
        "kv_all_rows_s": median["kv_all_rows"],
        "naive_s": median["naive"],
        "ratio": median["naive"] / median["kv"],
        "ratio_all_rows": median["naive"] / median["kv_all_rows"],
        "max_score_diff": score_diff,
        "max_grad_diff": grad_diff,
        "max_grad": grad_scale,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--n-tokens", type=int, nargs="+", default=[10, 50])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 by default: on this shared 2-vCPU machine a second thread "
        "mostly waits at GEMM barriers while other jobs hold the CPU",
    )
    parser.add_argument("--out", default="benchmarks/results/vpt_deep_kv.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    backbone = load_backbone("dinov2-small")
    data = load_dataset("fashion-mnist")
    rows = []
    print(
        f"dinov2-small, fashion-mnist, batch {args.batch_size}, {args.image_size} px, "
        f"{torch.get_num_threads()} threads, median of {args.steps} interleaved steps"
    )
    print(
        "| prompt tokens per layer | K/V prefix ([CLS]-only last layer) | K/V prefix, all rows "
        "| insert-and-discard | ratio | ratio, all rows | max score diff | max grad diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in args.n_tokens:
        method = {"name": "vpt-deep", "n_tokens": n}
        model = build_model(backbone, data, method, {"image_size": args.image_size})
        row = run(model, data, n, args.steps, args.batch_size)
        rows.append(row)
        print(
            f"| {n} | {row['kv_s']:.3f} s | {row['kv_all_rows_s']:.3f} s | {row['naive_s']:.3f} s "
            f"| **{row['ratio']:.2f}x** | {row['ratio_all_rows']:.2f}x | "
            f"{row['max_score_diff']:.1e} | {row['max_grad_diff']:.1e} (of {row['max_grad']:.1e}) |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
