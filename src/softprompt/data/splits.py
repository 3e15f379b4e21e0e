"""Seeded, stratified, duplicate-aware splitting.

Identical texts always land in the same split: several sources repeat a few texts
(cross-posts, retweets), and a copy in train and another in test would inflate scores.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from softprompt.data.records import Example

# Built-in datasets split with this seed whatever seed a run trains with, so every run
# of a built-in set sees the same test rows.
BUILTIN_SEED = 0

Group = list[Example]
Quota = dict[str, int]


def group_by_text(examples: Sequence[Example]) -> list[Group]:
    """Bundle exact duplicate texts, in order of first appearance (keeps results seeded-stable)."""
    groups: dict[str, Group] = {}
    for example in examples:
        groups.setdefault(example.text, []).append(example)
    return list(groups.values())


def label_counts(examples: Sequence[Example]) -> dict[str, int]:
    """Rows per label, used to turn fractions into per-label quotas."""
    counts: dict[str, int] = {}
    for example in examples:
        counts[example.label] = counts.get(example.label, 0) + 1
    return counts


def allocate(total: int, counts: dict[str, int]) -> Quota:
    """Share `total` rows across labels in proportion to `counts` (largest remainder).

    Rounding each label separately can lose or add rows; this keeps the total exact.
    """
    size = sum(counts.values())
    if size == 0 or total <= 0:
        return {label: 0 for label in counts}
    exact = {label: total * n / size for label, n in counts.items()}
    quota = {label: int(value) for label, value in exact.items()}
    by_remainder = sorted(counts, key=lambda label: (quota[label] - exact[label], label))
    for label in by_remainder[: total - sum(quota.values())]:
        quota[label] += 1
    return quota


def split_by_quotas(
    examples: Sequence[Example], quotas: Sequence[Quota], seed: int, *, stratify: bool = True
) -> list[list[Example]]:
    """Fill each quota from seeded-shuffled groups; what is left over is the last split.

    Quotas are keyed by label, or by "" when `stratify` is off (generation targets are
    all different, so there is nothing to stratify on). Returns `len(quotas) + 1` lists,
    each shuffled so that labels are interleaved (source files are often sorted by label,
    and a caller taking `train[:n]` should not get a single class).
    """
    rng = random.Random(seed)
    parts: list[list[Example]] = [[] for _ in range(len(quotas) + 1)]
    by_label: dict[str, list[Group]] = {}
    for group in group_by_text(examples):
        key = group[0].label if stratify else ""
        by_label.setdefault(key, []).append(group)
    for label in sorted(by_label):
        groups = by_label[label]
        rng.shuffle(groups)
        _fill(groups, [quota.get(label, 0) for quota in quotas], parts)
    for part in parts:
        rng.shuffle(part)
    return parts


def _fill(groups: list[Group], wanted: list[int], parts: list[list[Example]]) -> None:
    """Greedy fill; a group that would overflow a quota goes to a later split instead."""
    room = list(wanted)
    for group in groups:
        target = next((i for i, r in enumerate(room) if len(group) <= r), len(room))
        if target < len(room):
            room[target] -= len(group)
        parts[target].extend(group)
