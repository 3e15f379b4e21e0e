"""Metrics as pure functions over counts, so shares from batches and processes just add up."""

from __future__ import annotations

import torch


def class_counts(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> list[float]:
    """[correct, then per class: true positives, predicted, gold] as floats.

    Counts (not ratios) so shares from several processes can simply be summed."""
    counts = [float((predictions == targets).sum())]
    for c in range(num_classes):
        said, gold = predictions == c, targets == c
        counts += [float((said & gold).sum()), float(said.sum()), float(gold.sum())]
    return counts


def metrics_from_counts(counts: list[float], rows: float) -> dict[str, float]:
    """Accuracy and macro-F1 from `class_counts` totals over `rows` examples.

    Macro-F1 averages over the classes that occur in the gold labels or the
    predictions (as scikit-learn does): a class absent from both says nothing
    about the prompt, and counting it as F1 = 0 would halve a perfect score on a
    small test split."""
    per_class = [counts[1 + 3 * c : 4 + 3 * c] for c in range((len(counts) - 1) // 3)]
    f1 = [2 * tp / (said + gold) for tp, said, gold in per_class if said + gold > 0]
    return {"accuracy": counts[0] / max(rows, 1), "macro_f1": sum(f1) / max(len(f1), 1)}


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """BIO tags -> {(type, first, last)} chunks, as seqeval's default (conlleval) mode reads
    them: a chunk starts at B-X, or at I-X after O or after another type; it ends before
    any tag that does not continue it."""
    chunks, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and label == kind and start is not None
        if start is not None and not continues:
            chunks.add((kind, start, i - 1))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, label
    return chunks


def entity_counts(gold: list[list[str]], predicted: list[list[str]]) -> list[float]:
    """[true positive, predicted, gold] entity chunks over sentences (exact type and span)."""
    tp = said = truth = 0
    for g, p in zip(gold, predicted, strict=True):
        gold_chunks, predicted_chunks = entities(g), entities(p)
        tp += len(gold_chunks & predicted_chunks)
        said += len(predicted_chunks)
        truth += len(gold_chunks)
    return [float(tp), float(said), float(truth)]


def entity_f1(tp: float, said: float, truth: float) -> dict[str, float]:
    """Micro precision, recall and F1 over entity chunks (seqeval's headline numbers)."""
    precision = tp / said if said else 0.0
    recall = tp / truth if truth else 0.0
    f1 = 2 * tp / (said + truth) if said + truth else 0.0
    return {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1}
