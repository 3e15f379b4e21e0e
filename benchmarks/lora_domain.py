"""Prompts on a LoRA-adapted backbone (issue 22, point 2): "LoRA for a domain-adapted
backbone, with prompt tuning for task-specific variants on top".

1. A LoRA r=8 (q, v) is trained on one domain: the rows of VADER's product, tweet and
   editorial sentiment sets together (their fixed built-in splits written as one JSONL
   set), as a `softprompt compare --methods lora` unit, and exported as a PEFT LoRA
   folder (`export_lora`, what `softprompt export --format peft` writes).
2. For each target task, the same grid (zero-shot and a soft prompt, same seeds, steps
   and test rows) runs twice through `compare`: on the plain backbone, and on the
   backbone with that folder merged at load (`backbone.adapter`, `--backbone-adapter`).

    python benchmarks/lora_domain.py [--targets movie-sentiment,election-tweets]
        [--lora-steps 60] [--steps 40] [--seeds 0] [--test-limit 300]
        [--backbones plain,lora]

Run folders go to runs/lora_domain/ (git-ignored; a rerun reads finished units back);
prints a Markdown table and writes benchmarks/results/lora_domain.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from softprompt.config import build_run_config
from softprompt.data import load_dataset
from softprompt.files import atomic_write_text
from softprompt.recipes.compare import CompareConfig, compare
from softprompt.recipes.export import export_lora

RESULTS = Path(__file__).parent / "results"
RUNS = Path(__file__).parents[1] / "runs" / "lora_domain"  # run folders (git-ignored)
DOMAIN = ("product-sentiment", "tweet-sentiment", "editorial-sentiment")
DOMAIN_TASK = {  # one framing for the three sets, the label words movie-sentiment uses too
    "template": "Text: {text}\nSentiment:",
    "verbalizer": {"negative": [" negative"], "positive": [" positive"]},
}


def domain_files(folder: Path) -> dict[str, str]:
    """The three sets' built-in splits, concatenated split by split, as JSONL files."""
    splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for name in DOMAIN:
        data = load_dataset(name)
        for split, rows in splits.items():
            rows += [json.dumps({"text": e.text, "label": e.label}) for e in getattr(data, split)]
    paths = {split: folder / f"{split}.jsonl" for split in splits}
    for split, path in paths.items():
        atomic_write_text(path, "\n".join(splits[split]) + "\n")
    return {split: str(path) for split, path in paths.items()}


def run_config(data: dict[str, Any], task: dict[str, Any], train: dict[str, Any],
               out: Path, backbone: dict[str, Any], n_tokens: int) -> Any:  # fmt: skip
    return build_run_config(
        {
            "backbone": backbone,
            "data": data,
            "task": task,
            "method": {"name": "soft-prompt", "n_tokens": n_tokens},
            "train": {
                "eval_every": max(1, train["steps"] // 2),
                "eval_examples": 128,
                "warmup_steps": min(10, train["steps"] // 5),
                **train,
            },
            "out": str(out),
        }
    )


def domain_lora(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Train (or read back) the domain LoRA unit and export it as a PEFT folder."""
    files = domain_files(RUNS / "domain-data")
    train = {"steps": args.lora_steps, "lr": args.lora_lr, "batch_size": args.batch_size}
    data = {"source": files["train"], "validation": files["validation"], "test": files["test"]}
    out = RUNS / f"domain-lora-s{args.lora_steps}-t{args.domain_test_limit}"
    run = run_config(data, DOMAIN_TASK, train, out, {"name": args.backbone}, args.n_tokens)
    grid = CompareConfig(run, ["zero-shot", "lora"], [0], args.domain_test_limit)
    report = compare(grid, progress=False)
    lora = next(r for r in report.rows if r["method"] == "lora")
    adapter = export_lora(lora["prompt"], out.with_name(out.name + "-peft"))
    return adapter, {"rows": [_row(r) for r in report.rows], "adapter": str(adapter)}


def target_grid(target: str, adapter: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    """zero-shot and soft prompt on `target`, plain backbone or with `adapter` merged."""
    backbone = {"name": args.backbone, **({"adapter": str(adapter)} if adapter else {})}
    tag = "lora" if adapter else "plain"
    train = {"steps": args.steps, "lr": args.lr, "batch_size": args.batch_size}
    out = RUNS / f"{target}-{tag}-s{args.steps}-t{args.test_limit}"
    run = run_config({"source": target}, {}, train, out, backbone, args.n_tokens)
    start = time.perf_counter()
    config = CompareConfig(run, ["zero-shot", "soft-prompt"], args.seeds, args.test_limit)
    report = compare(config, progress=False)
    return {"target": target, "backbone": tag, "seconds": time.perf_counter() - start,
            "rows": [_row(r) for r in report.rows], "summary": report.summary}  # fmt: skip


def _row(unit: dict[str, Any]) -> dict[str, Any]:
    """A unit's test scores and its best validation accuracy (from its metrics.jsonl)."""
    keep = ("method", "seed", "accuracy", "macro_f1", "test_rows", "train_seconds",
            "best_step", "trainable_parameters")  # fmt: skip
    row = {k: unit[k] for k in keep if k in unit}
    log = Path(unit["prompt"]).parent / "metrics.jsonl"
    evals = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    evals = [e for e in evals if e.get("kind") == "eval"]
    if evals:
        row["best_validation_accuracy"] = max(e["accuracy"] for e in evals)
    return row


def markdown(grids: list[dict[str, Any]], lora: dict[str, Any], args: argparse.Namespace) -> str:
    head = (
        "| target | backbone | zero-shot acc (F1) | soft prompt acc: mean ± sd | per seed: "
        "acc (F1) | best validation acc, per seed | train time |\n" + "|---" * 7 + "|\n"
    )
    lines = []
    for g in grids:
        zero = next(r for r in g["rows"] if r["method"] == "zero-shot")
        tuned = [r for r in g["rows"] if r["method"] == "soft-prompt"]
        accs = [r["accuracy"] for r in tuned]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        cells = ", ".join(f"{r['accuracy']:.3f} ({r['macro_f1']:.3f})" for r in tuned)
        val = ", ".join(f"{r.get('best_validation_accuracy', float('nan')):.3f}" for r in tuned)
        secs = statistics.fmean(r["train_seconds"] for r in tuned)
        name = "plain" if g["backbone"] == "plain" else "+ domain LoRA (merged)"
        lines.append(
            f"| {g['target']} | {name} | {zero['accuracy']:.3f} ({zero['macro_f1']:.3f}) | "
            f"{statistics.fmean(accs):.3f} ± {sd:.3f} | {cells} | {val} | {secs / 60:.1f} min |"
        )
    note = (
        f"\nSmolLM2-135M ({args.backbone}); accuracy (macro-F1) on {args.test_limit} test rows; "
        f"{len(args.seeds)} seed(s) ({','.join(map(str, args.seeds))}); soft prompt "
        f"{args.n_tokens} tokens, {args.steps} steps, lr {args.lr:g}, batch {args.batch_size}; "
        f"domain LoRA r=8 on q,v, {args.lora_steps} steps, lr {args.lora_lr:g}, on "
        f"{' + '.join(DOMAIN)}; validated on 128 rows at mid-run and at the end, the better "
        "step kept. Shared 2-core CPU.\n"
    )
    for row in lora.get("rows", []):
        note += (
            f"Domain test ({row['test_rows']} rows of the three sets): {row['method']} "
            f"{row['accuracy']:.3f} (F1 {row['macro_f1']:.3f})"
            + (
                f", best validation {row['best_validation_accuracy']:.3f}.\n"
                if "best_validation_accuracy" in row
                else ".\n"
            )
        )
    return head + "\n".join(lines) + "\n" + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--targets", default="movie-sentiment,election-tweets")
    parser.add_argument("--seeds", default="0", help="training seeds of the soft prompts")
    parser.add_argument("--lora-steps", type=int, default=60)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-tokens", type=int, default=10)
    parser.add_argument("--test-limit", type=int, default=300)
    parser.add_argument("--domain-test-limit", type=int, default=100)
    parser.add_argument("--backbones", default="plain,lora",
                        help="which grids: plain, lora or both (processes run side by side "
                             "on different grids; a later run reads finished units back)")  # fmt: skip
    parser.add_argument("--out", default=str(RESULTS / "lora_domain.json"))
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    backbones = args.backbones.split(",")
    adapter, lora = domain_lora(args) if "lora" in backbones else (None, {})
    print(f"domain LoRA: {lora}", flush=True)
    grids = []
    for target in args.targets.split(","):
        for merged in [None] * ("plain" in backbones) + [adapter] * ("lora" in backbones):
            grids.append(target_grid(target, merged, args))
            table = markdown(grids, lora, args)
            result = {"domain_lora": lora, "grids": grids, "table": table, "args": vars(args),
                      "seconds": time.perf_counter() - start}  # fmt: skip
            atomic_write_text(Path(args.out), json.dumps(result, indent=1, default=str))
            print(table, flush=True)


if __name__ == "__main__":
    main()
