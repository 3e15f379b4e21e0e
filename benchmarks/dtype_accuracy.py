"""Accuracy under each frozen-weight dtype (issue 19): does holding the backbone in bf16
or int8 cost accuracy, before and after the same training?

For each variant (float32, bfloat16, int8 + bfloat16, int8 + float32 activations) one
`softprompt compare` grid (recipes/compare.py) scores zero-shot and trains a 20-token
soft prompt with the same seed, data order, steps and learning rate, then scores both on
the same seeded sample of `--test-limit` test rows. Prints a Markdown table of the test
accuracies and their differences from float32, and writes
benchmarks/results/dtype_accuracy.json. Unit folders go to runs/dtype_accuracy/ (a rerun
reads finished units back).

    python benchmarks/dtype_accuracy.py [--backbone smollm2-135m] [--steps 40]
        [--test-limit 1000] [--variants float32,bfloat16,int8+bfloat16,int8+float32]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from softprompt.config import build_run_config
from softprompt.files import atomic_write_text
from softprompt.recipes.compare import CompareConfig, compare

RESULTS = Path(__file__).parent / "results"
UNITS = Path(__file__).parents[1] / "runs" / "dtype_accuracy"  # git-ignored
VARIANTS = ["float32", "bfloat16", "int8+bfloat16", "int8+float32"]


def variant_grid(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Zero-shot and a trained soft prompt with the backbone held as `variant`."""
    quantize, _, dtype = variant.rpartition("+")
    run = build_run_config(
        {
            "backbone": {"name": args.backbone, "dtype": dtype, "quantize": quantize or "none"},
            "data": {"source": args.dataset},
            "method": {"name": "soft-prompt", "n_tokens": 20},
            "train": {
                "steps": args.steps,
                "batch_size": args.batch_size,
                "eval_every": args.steps,
                "eval_examples": 64,
                "warmup_steps": min(10, args.steps // 5),
                "lr": args.lr,
            },
            "out": str(UNITS / f"{args.backbone}-{args.dataset}-{variant}-s{args.steps}"),
        }
    )
    config = CompareConfig(
        run, methods=["zero-shot", "soft-prompt"], seeds=[0], test_limit=args.test_limit
    )
    start = time.perf_counter()
    report = compare(config, progress=False)
    scores = {s["method"]: s["mean"] for s in report.summary if s and "mean" in s}
    return {"variant": variant, "seconds": time.perf_counter() - start, **scores}


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    base = next((r for r in rows if r["variant"] == "float32"), None)
    lines = [
        "| frozen weights | zero-shot | x - float32 | soft prompt, trained | x - float32 |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["variant"]]
        for key in ("zero-shot", "soft-prompt"):
            value = r.get(key)
            cells.append("n/a" if value is None else f"{value:.3f}")
            delta = None if base is None or value is None else value - base.get(key, value)
            cells.append("-" if delta is None else f"{delta:+.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"\n{args.backbone} on {args.dataset}: {args.steps} steps of {args.batch_size}, "
        f"lr {args.lr:g}, seed 0, accuracy on {args.test_limit or 'all'} test rows.\n"
    )
    return "\n".join(lines) + "\n" + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--dataset", default="movie-sentiment")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=str(RESULTS / "dtype_accuracy.json"))
    args = parser.parse_args()
    rows = [variant_grid(v, args) for v in args.variants.split(",")]
    table = markdown(rows, args)
    print(table)
    record = {"settings": vars(args), "rows": rows, "table": table}
    atomic_write_text(Path(args.out), json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
