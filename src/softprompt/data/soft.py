"""Rows whose answer is a probability over the classes rather than one class.

Distillation (PET's final prompt, recipes/pet.py) trains on an ensemble's soft labels:
the teacher's uncertainty is the signal, and rounding it to a class throws it away.
A `SoftExample` is an ordinary `Example` (its `label` is the most probable class, so
accuracy and every split tool still work) that also carries `probs`, one probability
per class in the task's label order; a classification task trains on it with a soft
cross-entropy (tasks/classification.py), so the training loop needs no branch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from softprompt.data.records import Example
from softprompt.errors import DataError


@dataclass(frozen=True)
class SoftExample(Example):
    """`probs[c]` is the target probability of label c (labels in the task's order)."""

    probs: tuple[float, ...] = ()


def soft_example(text: str, labels: Sequence[str], probs: Sequence[float]) -> SoftExample:
    """A row labelled by `probs` over `labels`, checked: one finite probability >= 0 per
    label, summing to 1 (within 1e-4)."""
    values = tuple(float(p) for p in probs)
    if len(values) != len(labels):
        raise DataError(f"soft label: {len(values)} probabilities for {len(labels)} labels")
    if not all(math.isfinite(p) and p >= 0 for p in values) or abs(sum(values) - 1) > 1e-4:
        raise DataError(f"soft label: probabilities must be >= 0 and sum to 1, got {values}")
    best = max(range(len(values)), key=values.__getitem__)
    return SoftExample(text=text, label=labels[best], probs=values)
