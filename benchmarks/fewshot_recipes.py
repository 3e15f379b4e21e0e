"""The recipe columns of the few-shot table (benchmarks/fewshot_table.py): PET and the
meta-learned init, on exactly the K-shot samples and test rows its compare grids use
(`few_shot_dataset` with data seed = seed, `sample_test_rows` of the whole test split),
so their rows sit beside the compare units'.

PET's patterns are the dataset's built-in template and one more hand-written pattern
with the same label words (PET writes patterns per task); every stage trains with the
cell's run settings at the seed. A finished seed's PET report is read back on a rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from softprompt.backbones import load_backbone
from softprompt.config import RunConfig
from softprompt.data import load_dataset
from softprompt.data.shots import sample_shots
from softprompt.device import resolve_device
from softprompt.recipes.compare import sample_test_rows
from softprompt.recipes.loading import load_data
from softprompt.recipes.meta_init import MetaInitConfig, run_meta_init
from softprompt.recipes.pet import PetConfig, pet
from softprompt.tasks.presets import task_defaults

SECOND_PATTERN = {
    "movie-sentiment": "{text}\nIn short, the review is",
    "election-tweets": "{text}\nThe author of this tweet is",
    "newsgroups20": "{text}\nThis message was posted to the newsgroup",
}
PET_ROWS = {"pet-ensemble": "generation 0 ensemble (mean)", "pet-distilled": "distilled"}


def patterns(dataset: str) -> list[dict[str, Any]]:
    """The built-in framing, then the second template with the same label words."""
    first = task_defaults(dataset)
    return [first, {**first, "template": SECOND_PATTERN[dataset]}]


def _pet_seed(run: RunConfig, seed: int, test_limit: int, unlabelled: int) -> dict[str, Any]:
    """PET on data seed `seed` (training seed too); its report rows, read back if done."""
    out = Path(run.out) / f"s{seed}"
    report = out / "report.json"
    if report.is_file():
        return json.loads(report.read_text(encoding="utf-8"))
    full = load_data(dataclasses.replace(run.data, shots=None))
    sample = sample_shots(full.train, full.labels, run.data.shots, seed)
    dataset = dataclasses.replace(
        full,
        train=sample.train,
        validation=sample.validation,
        test=sample_test_rows(full.test, test_limit),
    )
    train = dataclasses.replace(run.train, seed=seed, overwrite=True)
    config = PetConfig(
        patterns=patterns(run.data.source),
        method=run.method,
        train=train,
        unlabelled_limit=unlabelled,
        seed=seed,
    )
    device = resolve_device(run.train.device)
    backbone = load_backbone(run.backbone, device=device)
    backbone.model.to(device)
    pet(backbone, dataset, sample.unlabelled, config, out, progress=False)
    return json.loads(report.read_text(encoding="utf-8"))


def summary(values: list[float], **extra: Any) -> dict[str, Any]:
    """mean, sample sd, min, max over seeds: the keys compare's summaries have."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "min": min(values),
            "max": max(values), "seeds": len(values), "accuracies": values, **extra}  # fmt: skip


def pet_cell(run: RunConfig, seeds: list[int], test_limit: int, unlabelled: int) -> dict[str, Any]:
    """The PET ensemble and PET distilled columns over `seeds`, with every pattern's scores."""
    reports = [_pet_seed(run, s, test_limit, unlabelled) for s in seeds]
    columns = {}
    for column, name in PET_ROWS.items():
        rows = [next(r for r in rep["rows"] if r["name"] == name) for rep in reports]
        columns[column] = summary(
            [r["accuracy"] for r in rows],
            method=column,
            patterns=[p["template"] for p in patterns(run.data.source)],
            unlabelled=unlabelled,
            train_seconds=statistics.fmean(
                sum(r.get("train_seconds", 0.0) for r in rep["rows"]) for rep in reports
            ),  # fmt: skip
            members=[
                [r["accuracy"] for r in rep["rows"] if "pattern" in r["name"]] for rep in reports
            ],  # fmt: skip
        )
    return columns


def meta_init_file(args: argparse.Namespace, units: Path) -> Path:
    """The meta-learned init (learned once per settings, then reused by every cell)."""
    sources = [s for s in args.meta_sources.split(",") if s]
    tag = f"{'+'.join(sources)}-o{args.meta_outer_steps}-i{args.meta_inner_steps}-n{args.n_tokens}"
    out = units / f"meta-init-{tag}"
    if (out / "prompt.safetensors").is_file():
        return out / "prompt.safetensors"
    for name in sources:
        load_dataset(name)  # a wrong source fails before the backbone loads
    config = MetaInitConfig(
        method={"name": "soft-prompt", "n_tokens": args.n_tokens},
        outer_steps=args.meta_outer_steps,
        inner_steps=args.meta_inner_steps,
        inner_lr=args.lr,
        batch_size=args.batch_size,
    )
    return run_meta_init(sources, args.backbone, config, out, resume=True)
