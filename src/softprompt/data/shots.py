"""The k-shot regime: K labelled rows per class, a validation set of the same size.

Few-shot users have K examples per class and nothing else labelled, so a result that
picks its best step on a large validation split overstates what they would get. As in
LM-BFF (Gao et al. 2021) and PET (Schick and Schuetze 2021), a run in this regime
trains on K rows per class and validates on another K per class drawn from the rest of
the training split; the remaining training texts are kept, without labels, for methods
that label unlabelled text (PET). The test split is untouched.

The sample is a pure function of (rows, K, seed). Identical texts count as one row
(data/splits.py's rule): a copy in training and another in validation would inflate
the validation figure the best prompt is chosen by.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass

from softprompt.data.records import Dataset, Example
from softprompt.data.splits import group_by_text
from softprompt.errors import ConfigError, DataError


@dataclass(frozen=True)
class Shots:
    """One k-shot sample: `train` and `validation` hold K rows per class each, never the
    same text; `unlabelled` the other training texts (labels dropped). `validation` comes
    in K rounds of one row per class, so its first N rows are balanced per class (N // C
    or one more each): `train.eval_examples` below its size cuts it without dropping a
    class."""

    train: list[Example]
    validation: list[Example]
    unlabelled: list[str]


def check_shots(shots: int | None, where: str = "data.shots") -> None:
    """A K the sampler can use: None (off) or a positive whole number."""
    if shots is None:
        return
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ConfigError(f"{where}: must be a whole number >= 1 (rows per class), got {shots!r}")


def _by_label(rows: Sequence[Example], labels: Sequence[str]) -> dict[str, list[Example]]:
    """One row per distinct text (its first occurrence), grouped by that row's label."""
    grouped: dict[str, list[Example]] = {label: [] for label in labels}
    for group in group_by_text(rows):
        if group[0].label in grouped:
            grouped[group[0].label].append(group[0])
    return grouped


def sample_shots(
    rows: Sequence[Example], labels: Sequence[str], shots: int, seed: int = 0
) -> Shots:
    """K rows per class for training and K more for validation, seeded by `seed`.

    Each class's distinct texts are shuffled with their own seeded generator, so the
    sample of one class does not change when another class gains or loses rows."""
    check_shots(shots)
    grouped = _by_label(rows, labels)
    short = {label: len(found) for label, found in grouped.items() if len(found) < 2 * shots}
    if short:
        counts = ", ".join(f"{label!r}: {n}" for label, n in short.items())
        raise DataError(
            f"data.shots={shots} needs {2 * shots} distinct training texts per class "
            f"({shots} to train, {shots} to validate); too few for {counts}; lower --shots"
        )
    train: list[Example] = []
    held: dict[str, list[Example]] = {}
    for label in labels:
        found = list(grouped[label])
        random.Random(f"shots:{seed}:{label}").shuffle(found)
        train += found[:shots]
        held[label] = found[shots : 2 * shots]
    validation = [e for row in zip(*held.values(), strict=True) for e in row]
    picked = {e.text for e in train} | {e.text for e in validation}
    unlabelled = list(dict.fromkeys(e.text for e in rows if e.text not in picked))
    order = random.Random(f"shots:{seed}:order")  # classes interleaved, not in blocks
    order.shuffle(train)
    for start in range(0, len(validation), len(labels)):  # each round in its own order
        validation[start : start + len(labels)] = order.sample(
            validation[start : start + len(labels)], len(labels)
        )
    return Shots(train=train, validation=validation, unlabelled=unlabelled)


def few_shot_dataset(dataset: Dataset, shots: int | None, seed: int = 0) -> Dataset:
    """`dataset` in the k-shot regime (or as is when `shots` is None): its train and
    validation splits replaced by the sample, its test split kept."""
    if shots is None:
        return dataset
    if dataset.task != "classification":
        raise ConfigError(
            f"data.shots: K examples per class needs a classification dataset; "
            f"{dataset.name!r} is a {dataset.task} task"
        )
    sample = sample_shots(dataset.train, dataset.labels, shots, seed)
    note = f"{shots}-shot sample (data seed {seed}) of {len(dataset.train)} training rows"
    description = f"{dataset.description}; {note}" if dataset.description else note
    return dataclasses.replace(
        dataset, train=sample.train, validation=sample.validation, description=description
    )
