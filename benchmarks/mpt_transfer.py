"""Multitask prompt tuning (Wang et al. 2023): does a shared prompt learned on source
tasks help a new task with few examples?

Sources: movie-sentiment, tweet-sentiment and editorial-sentiment, trained together in
one run with mixed-task batches, each a `multitask-prompt` (shared P* times a rank-1
part per task). Target: product-sentiment, left out of the sources. On the target, at
32 / 128 / 512 training examples (a seeded sample of its train split), the same step
budget for each of:

- `multitask-prompt` started from the sources' P* (`init: file`), the paper's transfer;
- a soft prompt from scratch (`init: random`);
- a soft prompt from sampled vocabulary (`init: vocab`);

each keeping its best prompt on the target's validation split (100 sentences) and
scored on its test split (300 sentences); zero-shot (template + label words, no
prompt) for reference. Prints a Markdown table and writes
benchmarks/results/mpt_transfer.json after every row (a cut run keeps what it did).

    OMP_NUM_THREADS=1 python benchmarks/mpt_transfer.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Any

from softprompt.api import build_model, build_models, task_config_for
from softprompt.backbones import load_backbone
from softprompt.config import RunTask
from softprompt.data import Dataset, load_dataset
from softprompt.evaluate import evaluate
from softprompt.model import PromptModel
from softprompt.tasks.presets import task_defaults
from softprompt.train import TrainConfig, train

SOURCES = ("movie-sentiment", "tweet-sentiment", "editorial-sentiment")
TARGET = "product-sentiment"
SIZES = (32, 128, 512)
N_TOKENS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-steps", type=int, default=150)
    parser.add_argument("--target-steps", type=int, default=60)
    parser.add_argument("--work", default="runs/mpt-transfer", help="source run folder")
    parser.add_argument("--out", default="benchmarks/results/mpt_transfer.json")
    args = parser.parse_args()
    backbone = load_backbone("smollm2-135m")
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    done = {(r["examples_trained"], r["start"]) for r in rows}
    shared = _source_prompt(backbone, args)
    target = load_dataset(TARGET)
    task = task_defaults(TARGET)
    if (0, "zero-shot") not in done:
        zero = build_model(backbone, target, {"name": "none"}, task)
        rows.append(_row(0, "zero-shot", evaluate(zero, target.test), 0.0, 0))
        _write(out, args, rows)
    starts = {
        "MPT: shared P* from the sources": {"name": "multitask-prompt", "init": "file",
                                            "init_file": str(shared)},
        "soft prompt, random init": {"name": "soft-prompt", "init": "random"},
        "soft prompt, vocab init": {"name": "soft-prompt", "init": "vocab"},
    }  # fmt: skip
    for size in SIZES:
        data = _sample(target, size)
        for start, method in starts.items():
            if (size, start) in done:
                continue
            model = build_model(backbone, data, {**method, "n_tokens": N_TOKENS}, task)
            tick = time.perf_counter()
            folder = Path(args.work) / "target" / f"{size}-{method['name']}-{method['init']}"
            result = train(model, data, _config(args.target_steps, 20), folder)
            best = PromptModel.load(result.prompt_path, backbone)
            seconds = time.perf_counter() - tick
            rows.append(_row(size, start, evaluate(best, data.test), seconds, result.best_step))
            print(rows[-1], flush=True)
            _write(out, args, rows)
    _print_table(rows)


def _config(steps: int, eval_every: int) -> TrainConfig:
    return TrainConfig(
        steps=steps, batch_size=8, lr=0.03, warmup_steps=5, eval_every=eval_every,
        eval_examples=0, seed=0,
    )  # fmt: skip


def _source_prompt(backbone: Any, args: argparse.Namespace) -> Path:
    """Train the sources together once; their files all hold P* (kept across re-runs)."""
    folder = Path(args.work) / "sources"
    first = folder / SOURCES[0] / "prompt.safetensors"
    if first.exists():
        return first
    data = {name: load_dataset(name) for name in SOURCES}
    method = {"name": "multitask-prompt", "n_tokens": N_TOKENS, "init": "vocab", "rank": 1}
    specs = [RunTask(name=n, data=None, method=method, task=task_defaults(n)) for n in SOURCES]
    for spec in specs:
        task_config_for(data[spec.name], spec.task)  # fail early on a bad framing
    models = build_models(backbone, specs, data)
    config = dataclasses.replace(
        _config(args.source_steps, 50), eval_examples=100, sampler="temperature", temperature=2.0
    )
    tick = time.perf_counter()
    train(models, data, config, folder)
    print(f"sources trained in {time.perf_counter() - tick:.0f} s", flush=True)
    return first


def _sample(data: Dataset, size: int) -> Dataset:
    """`size` training rows, seeded, half per label where the split allows (few-shot)."""
    by_label: dict[str, list] = {}
    for example in random.Random(0).sample(data.train, len(data.train)):
        by_label.setdefault(example.label, []).append(example)
    picked = [e for rows in by_label.values() for e in rows[: size // len(by_label)]]
    return dataclasses.replace(data, train=random.Random(1).sample(picked, len(picked)))


def _row(size: int, start: str, scores: dict[str, Any], seconds: float, step: int) -> dict:
    return {"examples_trained": size, "start": start, "accuracy": scores["accuracy"],
            "macro_f1": scores["macro_f1"], "test_rows": scores["examples"],
            "train_seconds": round(seconds, 1), "best_step": step}  # fmt: skip


def _write(out: Path, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"sources": SOURCES, "target": TARGET, "n_tokens": N_TOKENS,
              "source_steps": args.source_steps, "target_steps": args.target_steps, "rows": rows}  # fmt: skip
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)


def _print_table(rows: list[dict[str, Any]]) -> None:
    print("\n| target examples | start | test accuracy | macro-F1 |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['examples_trained']} | {r['start']} | {r['accuracy']:.3f} "
              f"| {r['macro_f1']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
