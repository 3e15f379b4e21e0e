"""Turning the user's files into a `Dataset`: splits and label checks."""

from __future__ import annotations

from pathlib import Path

from softprompt.data.conll import check_tags, read_conll_rows, tag_set
from softprompt.data.files import Columns, Row, read_rows
from softprompt.data.records import TASKS, Dataset, Example
from softprompt.data.splits import allocate, label_counts, split_by_quotas
from softprompt.errors import ConfigError, DataError


def load_files(
    source: str | Path,
    *,
    columns: Columns,
    task: str,
    labels: list[str] | None,
    seed: int,
    validation_fraction: float,
    test_fraction: float,
    validation: str | Path | None,
    test: str | Path | None,
) -> Dataset:
    """Read the train file (and optional validation/test files) and check labels across all."""
    _check_options(task, labels, validation_fraction, test_fraction)
    read = read_conll_rows if task == "tagging" else lambda path: read_rows(path, columns)
    main = read(source)
    extra = {name: path for name, path in (("validation", validation), ("test", test)) if path}
    extra_rows = {name: read(path) for name, path in extra.items()}
    label_set: list[str] = []
    if task == "classification":
        label_set = _label_set(source, main, extra, extra_rows, labels)
    if task == "tagging":
        label_set = tag_set(main)
        for name, rows in extra_rows.items():
            check_tags(extra[name], rows, label_set, f"the training file ({source})")
    fractions = {"validation": validation_fraction, "test": test_fraction}
    splits = _split(source, main, extra_rows, fractions, seed, stratify=task == "classification")
    return Dataset(
        name=Path(source).stem,
        task=task,
        labels=label_set,
        description=f"user data from {source}",
        **splits,
    )


def _label_set(
    source: str | Path,
    main: list[Row],
    extra: dict[str, str | Path],
    extra_rows: dict[str, list[Row]],
    labels: list[str] | None,
) -> list[str]:
    """The given labels (in the caller's order) or the sorted labels of the train file."""
    if labels is not None:
        label_set = _dedupe(labels)
        origin = "the given labels (data.labels in a run config; the prompt's own labels in eval)"
        _check_labels(source, main, label_set, origin)
    else:
        label_set, origin = sorted({row.label for row in main}), f"train ({source})"
    _check_label_count(source, label_set)
    for name, rows in extra_rows.items():
        _check_labels(extra[name], rows, label_set, origin)
    return label_set


def _check_options(task: str, labels: list[str] | None, vf: float, tf: float) -> None:
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
                f"{path}: line {row.line}: label {row.label!r} is not among {origin}: "
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
    source: str | Path,
    main: list[Row],
    extra_rows: dict[str, list[Row]],
    fractions: dict[str, float],
    seed: int,
    stratify: bool,
) -> dict[str, list[Example]]:
    """Carve missing validation/test splits out of the main file; the rest is train."""
    pool = [Example(row.text, row.label) for row in main]
    wanted = [name for name in ("test", "validation") if name not in extra_rows]
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
    for name, rows in extra_rows.items():
        result[name] = [Example(row.text, row.label) for row in rows]
    return {"train": train, "validation": result["validation"], "test": result["test"]}


def _size(total: int, fraction: float) -> int:
    """At least one row for any non-zero fraction, so small files still get a split."""
    if fraction <= 0:
        return 0
    return max(1, round(total * fraction))
