"""The few-shot table (issue 23): methods at K examples per class, over sampled training
sets, on SmolLM2. Each (dataset, K) cell is `softprompt compare --shots K` (one K-shot
sample per seed, data seeds 0..N-1, the same test rows for every unit): zero-shot with
the manual template, a soft prompt from scratch, DART, LoRA r=8, and the soft prompt with
automatic label words (`--verbalizer auto`, its own grid since it changes the framing).
Two columns are recipes run on the same samples and test rows (benchmarks/fewshot_recipes.py):
PET (`pet`: two patterns' ensemble and the prompt distilled from its soft labels) and a
soft prompt started from a Reptile meta-learned init (`meta-init`, learned once on
sentiment source tasks that are none of the table's datasets).
Anchors to quote beside it, not to reproduce: PET's AG News 87.5 with 10 examples
(RoBERTa-large), RLPrompt's SST-2 92.7 at 16 shots.

    python benchmarks/fewshot_table.py [--shots 16] [--seeds 0,1,2] [--steps 30]
        [--datasets movie-sentiment,election-tweets] [--test-limit 200] [--methods pet,...]
        [--eval-every N] [--eval-examples N]

Unit run folders go to runs/fewshot_table/ (a rerun reads finished units back); prints a
Markdown table and merges it into benchmarks/results/fewshot_table.json: a rerun with other
`--methods` adds or replaces those columns of a (dataset, K) cell and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fewshot_recipes import meta_init_file, pet_cell  # benchmarks/ is the script's folder

from softprompt.config import RunConfig, build_run_config
from softprompt.files import atomic_write_text
from softprompt.recipes.compare import CompareConfig, compare

RESULTS = Path(__file__).parent / "results"
UNITS = Path(__file__).parents[1] / "runs" / "fewshot_table"  # unit run folders (git-ignored)
EVAL_EXAMPLES = 300  # train.eval_examples' default: validation rows per evaluation
COLUMNS = {
    "zero-shot": "zero-shot (manual template)",
    "soft-prompt": "soft prompt",
    "soft-prompt+auto": "soft prompt + auto words",
    "dart": "DART",
    "lora": "LoRA r=8",
    "pet-ensemble": "PET ensemble",
    "pet-distilled": "PET distilled",
    "soft-prompt+meta": "soft prompt, meta-init",
}


def run_config(dataset: str, shots: int, args: argparse.Namespace, lr: float,
               task: dict[str, Any], method: dict[str, Any], out: Path) -> RunConfig:  # fmt: skip
    """The run every unit of a cell shares (compare units and the recipes' stages)."""
    return build_run_config(
        {
            "backbone": args.backbone,
            "data": {"source": dataset, "shots": shots, "seed": 0},
            "task": task,
            "method": method,
            "train": {
                "steps": args.steps,
                "batch_size": min(args.batch_size, 2 * shots),
                "eval_every": args.eval_every or max(1, args.steps // 3),
                "eval_examples": args.eval_examples,
                "warmup_steps": min(10, args.steps // 5),
                "lr": lr,
            },
            "out": str(out),
        }
    )


def grid(dataset: str, shots: int, args: argparse.Namespace, methods: list[str],
         lr: float, task: dict[str, Any], tag: str) -> dict[str, Any]:  # fmt: skip
    """One compare grid; its summaries keyed by method (+tag)."""
    folder = f"{dataset}-k{shots}-s{args.steps}-t{args.test_limit}-lr{lr:g}{schedule(args)}{tag}"
    method: dict[str, Any] = {"name": "soft-prompt", "n_tokens": args.n_tokens}
    if tag == "+meta":
        method |= {"init": "file", "init_file": str(meta_init_file(args, UNITS))}
    run = run_config(dataset, shots, args, lr, task, method, UNITS / folder)
    config = CompareConfig(run, methods=methods, seeds=args.seeds, test_limit=args.test_limit)
    report = compare(config, progress=False)
    return {s["method"] + tag: {**s, "lr": lr} for s in report.summary if s}


def cell(dataset: str, shots: int, args: argparse.Namespace) -> dict[str, Any]:
    """The columns in `--methods` order, each its own grid (finished units are read back)."""
    start, methods = time.perf_counter(), {}
    for column in args.methods:
        if column == "pet":
            name = f"{dataset}-k{shots}-s{args.steps}-t{args.test_limit}-lr{args.lr:g}"
            out = UNITS / f"{name}{schedule(args)}+pet"
            method = {"name": "soft-prompt", "n_tokens": args.n_tokens}
            run = run_config(dataset, shots, args, args.lr, {}, method, out)
            methods |= pet_cell(run, args.seeds, args.test_limit, args.unlabelled)
            continue
        name, _, tag = column.partition("+")
        task = {"verbalizer": "auto"} if tag == "auto" else {}
        lr = args.lora_lr if name == "lora" else args.lr
        methods |= grid(dataset, shots, args, [name], lr, task, f"+{tag}" if tag else "")
    how = setup(args)
    methods = {name: {**row, "setup": how} for name, row in methods.items()}
    return {"dataset": dataset, "shots": shots, "seconds": time.perf_counter() - start,
            "methods": methods, "setup": how}  # fmt: skip


def schedule(args: argparse.Namespace) -> str:
    """'' for the default validation schedule, else a folder suffix naming it: a unit
    folder holds one setting (compare refuses to read back a unit run otherwise)."""
    if not args.eval_every and args.eval_examples == EVAL_EXAMPLES:
        return ""
    return f"-e{args.eval_every or max(1, args.steps // 3)}x{args.eval_examples}"


def setup(args: argparse.Namespace) -> str:
    """How a cell was run, shown in its row (blocks may differ in seeds and test rows).
    A validation schedule other than the default (every steps // 3 steps, at most
    EVAL_EXAMPLES rows) is named: it decides which step's prompt is scored. Runs
    recorded before these options existed ran the default."""
    how = f"{len(args.seeds)} seeds, {args.steps} steps, {args.test_limit or 'all'} test rows"
    every = getattr(args, "eval_every", 0) or max(1, args.steps // 3)
    rows = getattr(args, "eval_examples", EVAL_EXAMPLES)
    if every >= args.steps:
        how += ", no step choice (validated once, at the last step)"
    elif every != max(1, args.steps // 3) or rows != EVAL_EXAMPLES:
        how += f", best of every {every} steps on {rows or 'all'} validation rows"
    return how


def merge(old: list[dict[str, Any]], new: dict[str, Any]) -> list[dict[str, Any]]:
    """`new` put into the cells already measured: its columns replace those of the same
    (dataset, K) cell, whose other columns stay; times add up. Each column keeps the
    setup it was run with, so rerunning one column never rewrites another's."""
    cells = [dict(c) for c in old]
    for c in cells:
        if (c["dataset"], c["shots"]) == (new["dataset"], new["shots"]):
            kept = {m: {"setup": c.get("setup"), **row} for m, row in c["methods"].items()}
            c["methods"] = {**kept, **new["methods"]}
            c["seconds"] = c["seconds"] + new["seconds"]
            c["setup"] = cell_setup(c["methods"])
            return cells
    return [*cells, new]


def cell_setup(methods: dict[str, dict[str, Any]]) -> str:
    """One setup when every column shares it; else each setup with the columns run so."""
    by_setup: dict[str, list[str]] = {}
    for name, row in methods.items():
        if row.get("setup"):
            by_setup.setdefault(row["setup"], []).append(name)
    if len(by_setup) <= 1:
        return next(iter(by_setup), "")
    return "; ".join(f"{how} ({', '.join(names)})" for how, names in by_setup.items())


def _score(s: dict[str, Any] | None) -> str:
    if not s or "mean" not in s:
        return "not run"
    spread = f" ± {s['sd']:.3f}" if s["seeds"] > 1 else ""
    return f"{s['mean']:.3f}{spread}"


def markdown(cells: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = "| dataset | K | " + " | ".join(COLUMNS.values()) + " | setup | time |\n"
    head += "|---" * (len(COLUMNS) + 4) + "|\n"
    lines = [
        f"| {c['dataset']} | {c['shots']} | "
        + " | ".join(_score(c["methods"].get(m)) for m in COLUMNS)
        + f" | {c.get('setup', '')} | {c['seconds'] / 60:.1f} min |"
        for c in cells
    ]
    note = (
        f"\nSmolLM2-135M ({args.backbone}), accuracy, mean ± sd over the K-shot samples (data "
        f"seeds 0..N-1, the same test rows for every unit of a cell); {args.n_tokens} virtual "
        f"tokens, lr {args.lr:g} (LoRA {args.lora_lr:g}); the best step chosen on the "
        "K-per-class validation sample unless the setup says otherwise. Shared 2-CPU machine.\n"
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
    parser.add_argument("--eval-every", type=int, default=0,
                        help="validate every N steps (0: steps // 3); N >= steps: only at the end")  # fmt: skip
    parser.add_argument("--eval-examples", type=int, default=EVAL_EXAMPLES,
                        help="validation rows per evaluation (0: all)")  # fmt: skip
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--methods", default=",".join(c for c in COLUMNS if "pet-" not in c) + ",pet",
                        help="columns, in run order (`pet` gives both PET columns)")  # fmt: skip
    parser.add_argument("--unlabelled", type=int, default=100,
                        help="PET: unlabelled texts its ensemble labels for distillation")  # fmt: skip
    parser.add_argument(
        "--meta-sources", default="tweet-sentiment,product-sentiment,editorial-sentiment"
    )
    parser.add_argument("--meta-outer-steps", type=int, default=40)
    parser.add_argument("--meta-inner-steps", type=int, default=4)
    parser.add_argument("--out", default=str(RESULTS / "fewshot_table.json"))
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.methods = [m for m in args.methods.split(",") if m]
    out = Path(args.out)
    kept = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    cells, runs = kept.get("cells", []), kept.get("runs", [kept["args"]] if "args" in kept else [])
    for c in cells:  # cells measured before setups were recorded: the first run's
        c.setdefault("setup", setup(argparse.Namespace(**runs[0])))
    runs.append(vars(args))
    for dataset in args.datasets.split(","):
        for shots in (int(k) for k in args.shots.split(",")):
            cells = merge(cells, cell(dataset, shots, args))
            table = markdown(cells, args)
            record = {"cells": cells, "table": table, "runs": runs}
            atomic_write_text(out, json.dumps(record, indent=1))
            print(table, flush=True)


if __name__ == "__main__":
    main()
