"""A split summary printed before training: rows per split and, for classes, per class.

A wrong label column, a class missing from a split or a tiny validation set is cheap to
see here and expensive to find after a run: the table comes before any model loads.
"""

from __future__ import annotations

from collections import Counter

from softprompt.data.records import SPLITS, Dataset

MAX_LABEL_WIDTH = 30  # longer label names are cut so the columns stay readable


def split_summary(dataset: Dataset, title: str | None = None) -> str:
    """A plain-text table: one row per class (classification) and an `all` row, one
    column per split; for generation and tagging only the row counts.

    Classes are rows, not columns, so 20 classes still fit a terminal. A class with no
    train rows is named after the table, since a prompt cannot learn it.
    """
    name = title or dataset.name
    counts = {split: Counter(e.label for e in dataset.split(split)) for split in SPLITS}
    classes = dataset.labels if dataset.task == "classification" else []
    head = f"data {name}: {dataset.task}"
    head += f", {len(classes)} classes" if classes else ""
    table = [["class" if classes else "", *SPLITS]]
    for label in classes:
        table.append([_cut(label), *(str(counts[split][label]) for split in SPLITS)])
    table.append(["all", *(str(len(dataset.split(split))) for split in SPLITS)])
    lines = [head, *_aligned(table)]
    untrained = [label for label in classes if not counts["train"][label]]
    if untrained:
        lines.append("note: no train rows for " + ", ".join(map(repr, untrained)))
    return "\n".join(lines)


def _cut(label: str) -> str:
    label = " ".join(label.split())  # a label with a line break would break the table
    return label if len(label) <= MAX_LABEL_WIDTH else label[: MAX_LABEL_WIDTH - 3] + "..."


def _aligned(table: list[list[str]]) -> list[str]:
    """First column left-aligned, counts right-aligned, two spaces apart."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for row in table:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines
