"""The one entry point for data: a built-in name or a path to the user's file."""

from __future__ import annotations

from pathlib import Path

from softprompt.data.builtins import BUILTINS
from softprompt.data.conll import CONLL_EXTENSIONS
from softprompt.data.files import SUPPORTED_EXTENSIONS, Columns
from softprompt.data.images import is_image_csv, load_images
from softprompt.data.records import Dataset, DatasetInfo
from softprompt.data.user import load_files
from softprompt.errors import ConfigError, DataError


def builtin_datasets() -> list[DatasetInfo]:
    """List built-ins with their install command, so the CLI can say how to get each."""
    return [builtin.info() for builtin in BUILTINS.values()]


def load_dataset(
    source: str,
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
    """Load a built-in dataset by name, the user's .csv / .jsonl / .json (JSON Lines) file,
    a CoNLL file (.conll / .bio / .iob: tagging), or an image folder.

    Built-ins have fixed splits (seed 0, sizes in `softprompt.data.builtins`) so results
    are comparable across users; all other arguments apply to user files only. For a
    user file, `validation` / `test` may name separate files; splits not given as files
    are cut from `source` by the fractions (seeded, stratified by label, identical
    texts kept together). Labels are always strings; without `labels` the label set is
    the sorted distinct labels of `source`. Raises `DataError` naming file, line and
    column for any data problem.
    """
    if source in BUILTINS:
        builtin = BUILTINS[source]
        if task not in ("classification", builtin.task):  # classification: the default
            raise ConfigError(f"built-in dataset {source!r} is a {builtin.task} task")
        return builtin.load()
    path = Path(source).expanduser()
    if path.is_dir() or is_image_csv(path, text_column):  # images: see data/images.py
        return load_images(
            path,
            column=text_column,
            label_column=label_column,
            seed=seed,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
        )
    if path.suffix.lower() in CONLL_EXTENSIONS:  # sequence labelling: see data/conll.py
        if task not in ("classification", "tagging"):  # classification: the default
            raise ConfigError(
                f"{source}: a CoNLL file ({path.suffix}) is a tagging task, not {task}"
            )
        task = "tagging"
    known = (*SUPPORTED_EXTENSIONS, *CONLL_EXTENSIONS)
    if not path.exists() and path.suffix.lower() not in known:
        raise DataError(
            f"{source!r} is neither a built-in dataset ({', '.join(BUILTINS)}) nor an "
            f"existing file; give a built-in name, a path to a "
            f"{' / '.join(known)} file, or an image folder (one sub-folder per class)"
        )
    return load_files(
        path,
        columns=Columns(text=text_column, label=label_column),
        task=task,
        labels=labels,
        seed=seed,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        validation=Path(validation).expanduser() if validation else None,
        test=Path(test).expanduser() if test else None,
    )
