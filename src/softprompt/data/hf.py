"""Data the Hugging Face way: `datasets` objects, `save_to_disk` folders, Parquet files
(one file, or a hub snapshot folder of `train-00000-of-00001.parquet`-style shards).

Each source becomes `Row`s per split, checked by the same code as CSV files
(`files.value_rows`), so a missing column or an empty cell reads the same whatever the
format. Integer labels of a `ClassLabel` column become their names ("pos", not "1"), as
the dataset's author meant them. `datasets` and `pyarrow` are optional (the `hf` extra),
imported only when such a source is given, so CSV users never need them. Nothing here
unpickles: a `save_to_disk` folder is Arrow files plus JSON, Parquet is a columnar file.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from softprompt.data.files import Columns, Row, check_columns, check_not_empty, value_rows
from softprompt.errors import DataError

HF_INSTALL = "pip install 'softprompt[hf]'"
PARQUET_EXTENSIONS = (".parquet",)
# the names `datasets` folders and hub datasets use for our three splits
SPLIT_NAMES = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}


def require(module: str) -> ModuleType:
    """Import an optional package of the `hf` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DataError(
            f"reading this data needs the {module.split('.')[0]!r} package ({err}); "
            f"install it with: {HF_INSTALL}"
        ) from None


def is_hf_folder(path: Path) -> bool:
    """A `save_to_disk` folder: a Dataset (state.json + dataset_info.json) or a DatasetDict."""
    if not path.is_dir():
        return False
    single = (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    return single or (path / "dataset_dict.json").is_file()


def is_hf_object(source: object) -> bool:
    """A `datasets.Dataset` or `DatasetDict`, told apart without importing `datasets`."""
    return type(source).__module__.split(".")[0] == "datasets"


def read_folder(path: Path, columns: Columns) -> dict[str, tuple[str, list[Row]]]:
    """The splits of a `save_to_disk` folder (a Dataset folder is all train rows)."""
    datasets = require("datasets")
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as err:
        raise DataError(
            f"{path}: cannot read this `datasets` folder ({err}); re-create it with "
            "save_to_disk, or give a .csv / .jsonl / .parquet file"
        ) from None
    return read_object(loaded, columns, str(path))


def read_object(source: Any, columns: Columns, where: str) -> dict[str, tuple[str, list[Row]]]:
    """The splits of a `datasets.Dataset` (all train) or `DatasetDict` (by split name),
    each with where it came from as messages print it."""
    datasets = require("datasets")
    if isinstance(source, datasets.Dataset):
        return {"train": (where, _dataset_rows(source, columns, where))}
    if not isinstance(source, datasets.DatasetDict):
        raise DataError(
            f"{where}: expected a datasets.Dataset or DatasetDict, got {type(source).__name__} "
            "(an IterableDataset must be materialised first: Dataset.from_list(list(it)))"
        )
    splits = {SPLIT_NAMES[name]: name for name in source if name in SPLIT_NAMES}
    if "train" not in splits:
        raise DataError(
            f"{where}: no 'train' split; splits present: {', '.join(map(repr, source)) or '(none)'}. "
            "Rename the training split to 'train'"
        )
    located = {ours: f"{where} [{theirs} split]" for ours, theirs in splits.items()}
    return {
        ours: (located[ours], _dataset_rows(source[theirs], columns, located[ours]))
        for ours, theirs in splits.items()
    }


def _dataset_rows(dataset: Any, columns: Columns, where: str) -> list[Row]:
    check_columns(where, list(dataset.column_names), columns)
    plain = dataset.with_format(None).select_columns([columns.text, columns.label])
    values = plain.to_dict()
    texts = _named(values[columns.text], getattr(dataset.features[columns.text], "names", None))
    labels = _named(values[columns.label], getattr(dataset.features[columns.label], "names", None))
    return check_not_empty(where, value_rows(where, texts, labels, columns))


def read_parquet(path: Path, columns: Columns) -> list[Row]:
    """One Parquet file; a `ClassLabel` recorded by `datasets` in its metadata names labels."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path (relative to {Path.cwd()})")
    parquet = require("pyarrow.parquet")
    try:
        schema = parquet.read_schema(path)
        check_columns(path, list(schema.names), columns)
        table = parquet.read_table(path, columns=[columns.text, columns.label])
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    names = _class_label_names(schema.metadata or {})
    texts = _named(table.column(columns.text).to_pylist(), names.get(columns.text))
    labels = _named(table.column(columns.label).to_pylist(), names.get(columns.label))
    return check_not_empty(path, value_rows(path, texts, labels, columns))


def is_parquet_folder(path: Path) -> bool:
    """A folder of Parquet shards, as a hub download leaves it (data/train-*.parquet)."""
    return path.is_dir() and next(path.rglob("*.parquet"), None) is not None


def read_parquet_folder(path: Path, columns: Columns) -> dict[str, tuple[str, list[Row]]]:
    """Every Parquet shard under `path`, grouped into splits by the name each file starts
    with (train, validation / valid / val / dev, test); shards of a split are read in
    name order and their rows numbered on across them."""
    shards: dict[str, list[Path]] = {}
    for file in sorted(path.rglob("*.parquet")):
        match = re.match(r"([a-z]+)", file.stem.lower())
        split = SPLIT_NAMES.get(match.group(1) if match else "")
        if split is None:
            raise DataError(
                f"{file}: cannot tell which split this Parquet file holds; name it "
                "train-*.parquet, validation-*.parquet or test-*.parquet, or give the file itself"
            )
        shards.setdefault(split, []).append(file)
    if "train" not in shards:
        raise DataError(f"{path}: no train-*.parquet file; name the training shards train-*")
    return {split: _joined(path, split, files, columns) for split, files in shards.items()}


def _joined(path: Path, split: str, files: list[Path], columns: Columns) -> tuple[str, list[Row]]:
    if len(files) == 1:
        return str(files[0]), read_parquet(files[0], columns)
    rows = [row for file in files for row in read_parquet(file, columns)]
    renumbered = [dataclasses.replace(row, line=n) for n, row in enumerate(rows, start=1)]
    return f"{path} [{split} shards, in name order]", renumbered


def _class_label_names(metadata: dict[bytes, bytes]) -> dict[str, list[str]]:
    """Label names `datasets` writes as JSON under the b"huggingface" schema key."""
    try:
        features = json.loads(metadata.get(b"huggingface", b"{}"))["info"]["features"]
    except (ValueError, KeyError, TypeError):
        return {}
    if not isinstance(features, dict):
        return {}
    return {
        column: [str(name) for name in spec["names"]]
        for column, spec in features.items()
        if isinstance(spec, dict) and spec.get("_type") == "ClassLabel" and "names" in spec
    }


def _named(values: list[Any], names: list[str] | None) -> list[Any]:
    """Class indices to names; -1 (the missing label of `ClassLabel`) becomes an empty cell."""
    if not names:
        return values
    return [
        names[v] if isinstance(v, int) and 0 <= v < len(names) else None if v == -1 else v
        for v in values
    ]
