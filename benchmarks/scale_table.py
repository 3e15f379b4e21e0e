"""The scale table (issue 19): zero-shot, a 20-token soft prompt and LoRA r=8 at the same
step budget, per backbone size and dataset. Lester et al. argue that prompt tuning closes
the gap to tuning the model as the model grows; this measures whether it does here.

Each (backbone, dataset) cell is one `softprompt compare` grid (recipes/compare.py:
zero-shot once, soft-prompt and lora per seed, the same RunConfig and training budget,
the same seeded sample of --test-limit test rows), run into
runs/scale_table/<backbone>-<dataset>-<dtype>-s<steps>-t<rows>/ (a rerun reads finished units back).
"gap closed" is (soft prompt - zero-shot) / (LoRA - zero-shot): 1 means the prompt
matches LoRA, 0 that it gains nothing over zero-shot. Prints a Markdown table and writes
benchmarks/results/scale_table.json.

    python benchmarks/scale_table.py [--steps 30] [--test-limit 200] [--seeds 0]
        [--backbones smollm2-135m,qwen2.5-coder-0.5b] [--datasets movie-sentiment]
        [--dtype bfloat16]

Backbones that are not installed (`softprompt backbones`) are skipped with a note.

Measured 2026-12-06 (bf16, batch 8, --steps 20 --test-limit 100 --seeds 0 --lora-lr 1e-3,
movie-sentiment, one thread on the shared 2-core machine): SmolLM2-135M zero-shot 0.820,
soft prompt 0.840, LoRA 0.800 (3.2 min); Qwen2.5-Coder-0.5B zero-shot 0.810, soft prompt
0.560, LoRA 0.820 (7.8 min of training and scoring); Qwen2.5-Coder-1.5B zero-shot 0.910,
soft prompt 0.880, LoRA 0.950 (19.9 min; 20.2 with the LoRA unit rerun after it stopped
copying the backbone: peak RSS growth 14,634 -> 4,697 MiB, docs/scaling.md). Prompt
tuning did not close more of the gap on the larger model at this budget. With LoRA at the prompt's lr 0.03 it collapsed to one class
(SmolLM2, 30 steps, 200 rows: 0.795 / 0.870 / 0.500).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from softprompt.backbones import builtin_backbones
from softprompt.config import build_run_config
from softprompt.files import atomic_write_text
from softprompt.recipes.compare import CompareConfig, compare

RESULTS = Path(__file__).parent / "results"
UNITS = Path(__file__).parents[1] / "runs" / "scale_table"  # unit run folders (git-ignored)
METHODS = ["zero-shot", "soft-prompt", "lora"]
BACKBONES = ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
DATASETS = ["movie-sentiment", "election-tweets"]


def grid(
    backbone: str, dataset: str, args: argparse.Namespace, methods: list[str], lr: float
) -> dict[str, Any]:
    """One compare grid of `methods` at learning rate `lr`; its summaries keyed by method."""
    suffix = "" if lr == args.lr else f"-lr{lr:g}"
    budget = f"s{args.steps}-t{args.test_limit}"  # another budget runs in its own folders
    run = build_run_config(
        {
            "backbone": {"name": backbone, "dtype": args.dtype},
            "data": {"source": dataset},
            "method": {"name": "soft-prompt", "n_tokens": 20},
            "train": {
                "steps": args.steps,
                "batch_size": args.batch_size,
                "eval_every": args.steps,
                "eval_examples": args.eval_examples,
                "warmup_steps": min(10, args.steps // 5),
                "lr": lr,
            },
            "out": str(UNITS / f"{backbone}-{dataset}-{args.dtype}-{budget}{suffix}"),
        }
    )
    config = CompareConfig(run, methods=methods, seeds=args.seeds, test_limit=args.test_limit)
    report = compare(config, progress=False)
    return {s["method"]: {**s, "lr": lr} for s in report.summary if s}


def cell(backbone: str, dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    """zero-shot and soft prompt at --lr; LoRA at --lora-lr (its own grid) when given."""
    lora_lr = args.lora_lr if args.lora_lr is not None else args.lr
    if lora_lr == args.lr:
        summary = grid(backbone, dataset, args, METHODS, args.lr)
    else:
        summary = grid(backbone, dataset, args, METHODS[:2], args.lr)
        summary.update(grid(backbone, dataset, args, ["lora"], lora_lr))
    return {
        "backbone": backbone,
        "dataset": dataset,
        "dtype": args.dtype,
        "seconds": _work_seconds(summary),
        "methods": summary,
    }


def _work_seconds(summary: dict[str, Any]) -> float:
    """Training and test-scoring seconds of the cell's units, as each unit recorded them:
    a cell read back from finished units costs its original time, not the read's."""
    return sum(
        (s.get("train_seconds", 0.0) + s.get("test_seconds", 0.0)) * s.get("seeds", 1)
        for s in summary.values()
    )


BUDGET = ("steps", "batch_size", "eval_examples", "test_limit", "lr", "lora_lr", "seeds", "dtype")


def merged_cells(cells: list[dict[str, Any]], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """This run's cells plus the recorded ones of other (backbone, dataset) pairs at the
    same budget, so adding a backbone does not drop the rows measured before."""
    path = RESULTS / "scale_table.json"
    if not path.exists():
        return cells
    old = json.loads(path.read_text(encoding="utf-8"))
    if any(old["settings"].get(k) != settings[k] for k in BUDGET):
        return cells  # another budget: this run's table replaces it
    ran = {(c["backbone"], c["dataset"]) for c in cells}
    return [c for c in old["cells"] if (c["backbone"], c["dataset"]) not in ran] + cells


def gap_closed(methods: dict[str, Any]) -> float | None:
    zero, soft, lora = (methods.get(m, {}).get("mean") for m in METHODS)
    if None in (zero, soft, lora) or lora <= zero:  # nothing to close
        return None
    return (soft - zero) / (lora - zero)


def _score(methods: dict[str, Any], name: str) -> str:
    s = methods.get(name)
    if not s or "mean" not in s:
        return "n/a"
    return f"{s['mean']:.3f}" + (f" ± {s['sd']:.3f}" if s["seeds"] > 1 else "")


def markdown(cells: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = (
        "| backbone | dataset | zero-shot | soft prompt (20) | LoRA r=8 | gap closed | time |\n"
        + "|---" * 7
        + "|\n"
    )
    lines = []
    for c in cells:
        m, closed = c["methods"], gap_closed(c["methods"])
        lines.append(
            f"| {c['backbone']} | {c['dataset']} | {_score(m, 'zero-shot')} | "
            f"{_score(m, 'soft-prompt')} | {_score(m, 'lora')} | "
            f"{'-' if closed is None else f'{closed:.2f}'} | {c['seconds'] / 60:.1f} min |"
        )
    note = (
        f"\n{args.steps} steps at batch {args.batch_size}, {len(args.seeds)} seed(s) "
        f"({','.join(map(str, args.seeds))}), {args.test_limit or 'all'} test rows, "
        f"backbone dtype {args.dtype}; lr {args.lr:g} (LoRA {args.lora_lr or args.lr:g}); "
        "accuracy on the test sample; gap closed = (soft - zero-shot) / (LoRA - zero-shot), "
        "'-' where LoRA does not beat zero-shot.\n"
    )
    return head + "\n".join(lines) + "\n" + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-examples", type=int, default=64)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.03, help="soft prompt's learning rate")
    parser.add_argument("--lora-lr", type=float, default=None, help="LoRA's (default: --lr)")
    parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
    parser.add_argument("--dtype", default="bfloat16", help="frozen weights (auto, float32, ...)")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    installed = {b.name for b in builtin_backbones() if b.installed}
    cells, skipped = [], []
    for backbone in args.backbones.split(","):
        if backbone not in installed:
            skipped.append(backbone)
            continue
        for dataset in args.datasets.split(","):
            cells.append(cell(backbone, dataset, args))
            print(markdown(cells, args), flush=True)
    if skipped:
        print(f"not installed, skipped: {', '.join(skipped)}")
    settings = {**vars(args)}
    cells = merged_cells(cells, settings)
    settings["backbones"] = ",".join(dict.fromkeys(c["backbone"] for c in cells))
    settings["datasets"] = ",".join(dict.fromkeys(c["dataset"] for c in cells))
    payload = {"settings": settings, "skipped": skipped, "cells": cells}
    for c in cells:
        c["gap_closed"] = gap_closed(c["methods"])
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / "scale_table.json", json.dumps(payload, indent=1, default=str))


if __name__ == "__main__":
    main()
