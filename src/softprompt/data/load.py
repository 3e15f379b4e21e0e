"""The one entry point for data: a built-in name or a path to the user's file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from softprompt.data.builtins import BUILTINS
from softprompt.data.conll import CONLL_EXTENSIONS
from softprompt.data.files import SUPPORTED_EXTENSIONS, Columns
from softprompt.data.hf import (
    PARQUET_EXTENSIONS,
    is_hf_folder,
    is_hf_object,
    is_parquet_folder,
    read_folder,
    read_parquet_folder,
)
from softprompt.data.hf import read_object as read_hf_object
from softprompt.data.images import is_image_csv, load_images
from softprompt.data.records import Dataset, DatasetInfo
from softprompt.data.user import Given, SplitOptions, load_files, load_splits
from softprompt.errors import ConfigError, DataError


def builtin_datasets() -> list[DatasetInfo]:
    """List built-ins with their install command, so the CLI can say how to get each."""
    return [builtin.info() for builtin in BUILTINS.values()]


def load_dataset(
    source: str | Path | Any,
    *,
    text_column: str = "text",
    label_column: str = "label",
    task: str = "classification",
    labels: list[str] | None = None,
    seed: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    validation: str | None = None,
    test: str | None = None,
) -> Dataset:
    """Load a built-in dataset by name, the user's .csv / .jsonl / .json (JSON Lines or
    one JSON array) / .parquet file, a `datasets` `save_to_disk` folder, a
    `datasets.Dataset` / `DatasetDict` object, a CoNLL file (.conll / .bio / .iob:
    tagging), or an image folder.

    Built-ins have fixed splits (seed 0, sizes in `softprompt.data.builtins`) so results
    are comparable across users; all other arguments apply to user files only. For a
    user file, `validation` / `test` may name separate files; splits not given as files
    are cut from `source` by the fractions (seeded, stratified by label, identical
    texts kept together). Labels are always strings; without `labels` the label set is
    the sorted distinct labels of `source`. A `DatasetDict` (or a folder of one) gives
    its train / validation (or valid, val, dev) / test splits; other splits are unused.
    `ClassLabel` columns give label names. Parquet and `datasets` need the `hf` extra.
    Raises `DataError` naming file, line (or row) and column for any data problem.
    """
    columns = Columns(text=text_column, label=label_column)
    options = SplitOptions(
        columns=columns,
        task=task,
        labels=labels,
        seed=seed,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        validation=Path(validation).expanduser() if validation else None,
        test=Path(test).expanduser() if test else None,
    )
    if is_hf_object(source):
        name = _hf_name(source)
        given: Given = dict(read_hf_object(source, columns, f"datasets object {name!r}"))
        return load_splits(name, given, f"datasets object {name}", options)
    if not isinstance(source, str | Path):
        raise DataError(
            f"load_dataset takes a dataset name, a path or a datasets.Dataset / DatasetDict, "
            f"got {type(source).__name__}"
        )
    source = str(source)
    if source in BUILTINS:
        return _load_builtin(source, task)
    return _load_path(source, options)


def _load_builtin(name: str, task: str) -> Dataset:
    """A built-in's task is fixed by its data: asking for another is refused, not ignored."""
    builtin = BUILTINS[name]
    if task not in ("classification", builtin.task):  # classification: the default
        raise ConfigError(f"built-in dataset {name!r} is a {builtin.task} task")
    return builtin.load()


def _load_path(source: str, options: SplitOptions) -> Dataset:
    """A user's folder or file, read by what it holds. `datasets` and Parquet folders are
    recognised first: any other folder would be taken for an image folder."""
    path = Path(source).expanduser()
    columns = options.columns
    if is_hf_folder(path):
        given: Given = dict(read_folder(path, columns))
        return load_splits(path.name, given, f"datasets folder {source}", options)
    if is_parquet_folder(path):
        given = dict(read_parquet_folder(path, columns))
        return load_splits(path.name, given, f"Parquet folder {source}", options)
    if path.is_dir() or is_image_csv(path, columns.text):  # images: see data/images.py
        return load_images(
            path,
            column=columns.text,
            label_column=columns.label,
            seed=options.seed,
            validation_fraction=options.validation_fraction,
            test_fraction=options.test_fraction,
        )
    if path.suffix.lower() in CONLL_EXTENSIONS:  # sequence labelling: see data/conll.py
        options = _tagging_options(source, path, options)
    _check_known_file(source, path)
    return load_files(path, options)


def _tagging_options(source: str, path: Path, options: SplitOptions) -> SplitOptions:
    """A CoNLL file can only be tagged: the default task becomes tagging, another task is
    refused with the file named."""
    if options.task not in ("classification", "tagging"):  # classification: the default
        raise ConfigError(
            f"{source}: a CoNLL file ({path.suffix}) is a tagging task, not {options.task}"
        )
    return dataclasses.replace(options, task="tagging")


def _check_known_file(source: str, path: Path) -> None:
    """A name that is no built-in, no existing path and no known file type is most likely
    a mistyped built-in: say every kind of source that would work."""
    known = (*SUPPORTED_EXTENSIONS, *PARQUET_EXTENSIONS, *CONLL_EXTENSIONS)
    if not path.exists() and path.suffix.lower() not in known:
        raise DataError(
            f"{source!r} is neither a built-in dataset ({', '.join(BUILTINS)}) nor an "
            f"existing file; give a built-in name, a path to a "
            f"{' / '.join(known)} file, a `datasets` save_to_disk folder, or an image "
            "folder (one sub-folder per class)"
        )


def _hf_name(source: Any) -> str:
    """The dataset's own name when `datasets` recorded one (it names the run), else "dataset"."""
    first = next(iter(source.values()), None) if hasattr(source, "values") else source
    info = getattr(first, "info", None)
    return getattr(info, "dataset_name", None) or "dataset"
