"""The records every other part of softprompt consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

from softprompt.errors import DataError

TASKS = ("classification", "generation", "tagging")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    """One input text and its answer.

    For classification `label` is the label name; for generation it is the target text;
    for tagging `text` is the words and `label` their tags, both joined by single spaces.
    Frozen so examples can be shared between splits and used as dict keys safely.
    """

    text: str
    label: str


@dataclass
class Dataset:
    """A loaded dataset with fixed splits, so every method is scored on the same rows."""

    name: str
    task: str
    labels: list[str]
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    description: str = ""

    def split(self, name: str) -> list[Example]:
        """Look a split up by name, as the CLI and configs refer to splits by string."""
        if name not in SPLITS:
            raise DataError(
                f"unknown split {name!r} for dataset {self.name!r}; use one of: {', '.join(SPLITS)}"
            )
        return getattr(self, name)


@dataclass(frozen=True)
class DatasetInfo:
    """What `softprompt datasets` lists: enough to pick a dataset and to install its source."""

    name: str
    description: str
    task: str
    labels: tuple[str, ...] = field(default_factory=tuple)
    install: str = ""
    installed: bool = False
