"""Turning the user's rows into a `Dataset`: splits and label checks.

Every source (CSV / JSON files, Parquet, a `datasets` folder or object) arrives as rows
per split, each with where it came from, so the label checks and the splitting are one
code path whatever the format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from softprompt.data.conll import check_tags, read_conll_rows, tag_set
from softprompt.data.files import Columns, Row, read_rows
from softprompt.data.hf import PARQUET_EXTENSIONS, read_parquet
from softprompt.data.records import TASKS, Dataset, Example
from softprompt.data.splits import allocate, label_counts, split_by_quotas
from softprompt.errors import ConfigError, DataError

# split name -> (where the rows came from, as messages print it; the rows)
Given = dict[str, tuple[str | Path, list[Row]]]


@dataclass(frozen=True)
class SplitOptions:
    """How a user's rows become a `Dataset`, whatever the source format: one bundle that
    every reader passes through unchanged (see `load_dataset` for each field)."""

    columns: Columns
    task: str = "classification"
    labels: list[str] | None = None
    seed: int = 0
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    validation: Path | None = None  # a separate validation file
    test: Path | None = None  # a separate test file


def load_files(source: str | Path, options: SplitOptions) -> Dataset:
    """Read the train file (and optional validation/test files) and check labels across all."""
    _check_options(options)
    given: Given = {"train": (source, _reader(options.task, options.columns)(Path(source)))}
    return load_splits(Path(source).stem, given, f"user data from {source}", options)


def load_splits(name: str, given: Given, description: str, options: SplitOptions) -> Dataset:
    """Rows already read per split, plus optional validation/test files; splits not
    given are cut from train by the fractions. A split given twice (in the source and
    as a file) is refused rather than one silently winning."""
    _check_options(options)
    task = options.task
    read = _reader(task, options.columns)
    for split, path in (("validation", options.validation), ("test", options.test)):
        if path is not None and split in given:
            raise ConfigError(
                f"{given[split][0]} already has a {split} split and a {split} file was given "
                f"too ({path}); drop one of them"
            )
        if path is not None:
            given[split] = (path, read(Path(path)))
    label_set: list[str] = []
    if task == "classification":
        label_set = _label_set(given, options.labels)
    if task == "tagging":
        label_set = tag_set(given["train"][1])
        for split in ("validation", "test"):
            if split in given:
                where, rows = given[split]
                check_tags(where, rows, label_set, f"the training file ({given['train'][0]})")
    fractions = {"validation": options.validation_fraction, "test": options.test_fraction}
    splits = _split(given, fractions, options.seed, stratify=task == "classification")
    return Dataset(name=name, task=task, labels=label_set, description=description, **splits)


def _reader(task: str, columns: Columns) -> Callable[[Path], list[Row]]:
    """Tagging reads CoNLL files; other tasks read tables (.parquet, .csv, .json(l))."""
    if task == "tagging":
        return read_conll_rows

    def read(path: Path) -> list[Row]:
        if path.suffix.lower() in PARQUET_EXTENSIONS:
            return read_parquet(path, columns)
        return read_rows(path, columns)

    return read


def _label_set(given: Given, labels: list[str] | None) -> list[str]:
    """The given labels (in the caller's order) or the sorted labels of the train rows."""
    source, main = given["train"]
    if labels is not None:
        label_set = _dedupe(labels)
        origin = "the given labels (data.labels in a run config; the prompt's own labels in eval)"
        _check_labels(source, main, label_set, origin)
    else:
        label_set, origin = sorted({row.label for row in main}), f"train ({source})"
    _check_label_count(source, label_set)
    for split in ("validation", "test"):
        if split in given:
            where, rows = given[split]
            _check_labels(where, rows, label_set, origin)
    return label_set


def _check_options(options: SplitOptions) -> None:
    task, labels = options.task, options.labels
    vf, tf = options.validation_fraction, options.test_fraction
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not known; use one of: {', '.join(TASKS)}")
    if task != "classification" and labels:
        raise ConfigError("labels only apply to task 'classification'; drop data.labels")
    for name, value in (("validation_fraction", vf), ("test_fraction", tf)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if vf + tf >= 1.0:
        raise ConfigError(
            f"validation_fraction + test_fraction must be below 1 (got {vf} + {tf}); "
            "lower them so rows are left for training"
        )


def _dedupe(labels: list[str]) -> list[str]:
    """Keep the caller's order (it may match a verbalizer), drop repeats and blanks."""
    cleaned = [str(label).strip() for label in labels]
    return list(dict.fromkeys(label for label in cleaned if label))


def _check_labels(path: str | Path, rows: list[Row], allowed: list[str], origin: str) -> None:
    known = set(allowed)
    for row in rows:
        if row.label not in known:
            raise DataError(
                f"{path}: {row.place}: label {row.label!r} is not among {origin}: "
                f"{', '.join(repr(label) for label in allowed)}. "
                "Fix the row, or add the label to the label set / to the train file"
            )


def _check_label_count(path: str | Path, label_set: list[str]) -> None:
    if len(label_set) < 2:
        found = ", ".join(repr(label) for label in label_set) or "none"
        raise DataError(
            f"{path}: classification needs at least 2 labels, found {found}; "
            "check --label-column, or use --task generation"
        )


def _split(
    given: Given, fractions: dict[str, float], seed: int, stratify: bool
) -> dict[str, list[Example]]:
    """Carve missing validation/test splits out of the train rows; the rest is train."""
    source, main = given["train"]
    pool = [Example(row.text, row.label) for row in main]
    wanted = [name for name in ("test", "validation") if name not in given]
    sizes = {name: _size(len(pool), fractions[name]) for name in wanted}
    if len(pool) - sum(sizes.values()) < 1:
        raise DataError(
            f"{source}: only {len(pool)} rows, too few to split off "
            f"{' and '.join(wanted)}; add rows, lower the fractions, or give separate "
            "--validation-file / --test-file files"
        )
    counts = label_counts(pool) if stratify else {"": len(pool)}
    quotas = [allocate(sizes[name], counts) for name in wanted]
    *parts, train = split_by_quotas(pool, quotas, seed, stratify=stratify)
    result = dict(zip(wanted, parts, strict=True))
    for name in wanted:
        if sizes[name] and not result[name]:
            distinct = len({e.text for e in pool})
            raise DataError(
                f"{source}: the {name} split came out empty: the file has only {distinct} distinct "
                "texts and identical texts stay in one split; add more distinct rows or give a "
                f"separate --{name}-file"
            )
    for name in ("validation", "test"):
        if name in given:
            result[name] = [Example(row.text, row.label) for row in given[name][1]]
    return {"train": train, "validation": result["validation"], "test": result["test"]}


def _size(total: int, fraction: float) -> int:
    """At least one row for any non-zero fraction, so small files still get a split."""
    if fraction <= 0:
        return 0
    return max(1, round(total * fraction))
