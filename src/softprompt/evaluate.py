"""Evaluation: pure metric functions plus a batched, length-sorted scorer."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from softprompt.data import Example
from softprompt.device import autocast
from softprompt.distributed import ProcessInfo, all_sum
from softprompt.errors import DataError


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


def length_sorted_batches(examples: list[Example], batch_size: int) -> list[list[Example]]:
    """Group similar lengths so padding (wasted compute) stays small."""
    ordered = sorted(examples, key=lambda e: len(e.text))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    examples: list[Example],
    *,
    batch_size: int = 32,
    process: ProcessInfo | None = None,
    bf16: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Loss (and accuracy / macro-F1 for classification) over `examples`.

    Under DDP each process scores its own share and the counts are summed,
    so every process returns the same numbers."""
    process = process or ProcessInfo()
    shard = examples[process.rank :: process.world]
    classify = model.task.config.kind == "classification"
    num_classes = len(model.task.config.labels)
    loss_sum, rows = 0.0, 0
    counts = [0.0] * (1 + 3 * num_classes) if classify else []
    was_training = model.training
    model.eval()
    chunks = length_sorted_batches(shard, batch_size)
    for chunk in tqdm(chunks, desc="eval", leave=False, disable=not (progress and process.main)):
        with autocast(model.device, bf16):
            out = model(model.collate(chunk))
        loss_sum += out.loss.item() * len(chunk)
        rows += len(chunk)
        if classify:
            new = class_counts(out.scores.argmax(-1), out.targets, num_classes)
            counts = [a + b for a, b in zip(counts, new, strict=True)]
    model.train(was_training)
    # every process sends a vector of the same length, even with an empty shard
    loss_sum, rows, *counts = all_sum([loss_sum, float(rows), *counts], process)
    if rows == 0:
        raise DataError("nothing to evaluate: the split has no rows; check the dataset's splits")
    result: dict[str, Any] = metrics_from_counts(counts, rows) if classify else {}
    result["loss"] = loss_sum / max(rows, 1)
    result["examples"] = int(rows)
    return result
