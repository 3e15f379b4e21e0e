"""The few-shot table (issue 23): methods at K examples per class, over sampled training
sets, on SmolLM2. Each (dataset, K) cell is `softprompt compare --shots K` (one K-shot
sample per seed, data seeds 0..N-1, the same test rows for every unit): zero-shot with
the manual template, a soft prompt from scratch, DART, LoRA r=8, and the soft prompt with
automatic label words (`--verbalizer auto`, its own grid since it changes the framing).
Anchors to quote beside it, not to reproduce: PET's AG News 87.5 with 10 examples
(RoBERTa-large), RLPrompt's SST-2 92.7 at 16 shots.

    python benchmarks/fewshot_table.py [--shots 16] [--seeds 0,1,2] [--steps 30]
        [--datasets movie-sentiment,election-tweets] [--test-limit 200]

Unit run folders go to runs/fewshot_table/ (a rerun reads finished units back); prints a
Markdown table and writes benchmarks/results/fewshot_table.json.
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
UNITS = Path(__file__).parents[1] / "runs" / "fewshot_table"  # unit run folders (git-ignored)
COLUMNS = {
    "zero-shot": "zero-shot (manual template)",
    "soft-prompt": "soft prompt",
    "soft-prompt+auto": "soft prompt + auto words",
    "dart": "DART",
    "lora": "LoRA r=8",
}


def grid(dataset: str, shots: int, args: argparse.Namespace, methods: list[str],
         lr: float, task: dict[str, Any], tag: str) -> dict[str, Any]:  # fmt: skip
    """One compare grid; its summaries keyed by method (+tag)."""
    folder = f"{dataset}-k{shots}-s{args.steps}-t{args.test_limit}-lr{lr:g}{tag}"
    run = build_run_config(
        {
            "backbone": args.backbone,
            "data": {"source": dataset, "shots": shots, "seed": 0},
            "task": task,
            "method": {"name": "soft-prompt", "n_tokens": args.n_tokens},
            "train": {
                "steps": args.steps,
                "batch_size": min(args.batch_size, 2 * shots),
                "eval_every": max(1, args.steps // 3),
                "warmup_steps": min(10, args.steps // 5),
                "lr": lr,
            },
            "out": str(UNITS / folder),
        }
    )
    config = CompareConfig(run, methods=methods, seeds=args.seeds, test_limit=args.test_limit)
    report = compare(config, progress=False)
    return {s["method"] + tag: {**s, "lr": lr} for s in report.summary if s}


def cell(dataset: str, shots: int, args: argparse.Namespace) -> dict[str, Any]:
    """The columns in `--methods` order, each its own grid (finished units are read back)."""
    start, methods = time.perf_counter(), {}
    for column in args.methods:
        name, _, tag = column.partition("+")
        task = {"verbalizer": "auto"} if tag == "auto" else {}
        lr = args.lora_lr if name == "lora" else args.lr
        methods |= grid(dataset, shots, args, [name], lr, task, f"+{tag}" if tag else "")
    return {"dataset": dataset, "shots": shots, "seconds": time.perf_counter() - start,
            "methods": methods}  # fmt: skip


def _score(s: dict[str, Any] | None) -> str:
    if not s or "mean" not in s:
        return "n/a"
    spread = f" ± {s['sd']:.3f}" if s["seeds"] > 1 else ""
    return f"{s['mean']:.3f}{spread}"


def markdown(cells: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = "| dataset | K | " + " | ".join(COLUMNS.values()) + " | time |\n"
    head += "|---" * (len(COLUMNS) + 3) + "|\n"
    lines = [
        f"| {c['dataset']} | {c['shots']} | "
        + " | ".join(_score(c["methods"].get(m)) for m in COLUMNS)
        + f" | {c['seconds'] / 60:.1f} min |"
        for c in cells
    ]
    note = (
        f"\nSmolLM2-135M ({args.backbone}), accuracy on {args.test_limit or 'all'} test rows, "
        f"mean ± sd over {len(args.seeds)} K-shot samples (data seeds "
        f"{','.join(map(str, args.seeds))}); {args.steps} steps, {args.n_tokens} virtual tokens, "
        f"lr {args.lr:g} (LoRA {args.lora_lr:g}); the best step chosen on the K-per-class "
        "validation sample.\n"
    )
    return head + "\n".join(lines) + "\n" + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--datasets", default="movie-sentiment,election-tweets")
    parser.add_argument("--shots", default="16", help="comma-separated K values")
    parser.add_argument("--seeds", default="0,1,2", help="data (and training) seeds")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-tokens", type=int, default=10)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--methods", default=",".join(COLUMNS), help="columns, in run order")
    parser.add_argument("--out", default=str(RESULTS / "fewshot_table.json"))
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.methods = [m for m in args.methods.split(",") if m]
    cells = []
    for dataset in args.datasets.split(","):
        for shots in (int(k) for k in args.shots.split(",")):
            cells.append(cell(dataset, shots, args))
            table = markdown(cells, args)
            atomic_write_text(Path(args.out), json.dumps({"cells": cells, "table": table,
                                                          "args": vars(args)}, indent=1))  # fmt: skip
            print(table, flush=True)


if __name__ == "__main__":
    main()
