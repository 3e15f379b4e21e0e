"""Evaluation: pure metric functions plus a batched, length-sorted scorer."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from softprompt.data import Example
from softprompt.train.distributed import ProcessInfo, all_sum


def accuracy(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    return float((predictions == targets).float().mean()) if len(targets) else 0.0


def macro_f1(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    scores = []
    for c in range(num_classes):
        tp = float(((predictions == c) & (targets == c)).sum())
        fp = float(((predictions == c) & (targets != c)).sum())
        fn = float(((predictions != c) & (targets == c)).sum())
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / num_classes


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
    predictions, targets, loss_sum, rows = [], [], 0.0, 0
    was_training = model.training
    model.eval()
    chunks = length_sorted_batches(shard, batch_size)
    for chunk in tqdm(chunks, desc="eval", leave=False, disable=not (progress and process.main)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(model.collate(chunk))
        loss_sum += float(out.loss) * len(chunk)
        rows += len(chunk)
        if out.scores is not None and out.targets is not None:
            predictions.append(out.scores.argmax(-1))
            targets.append(out.targets)
    model.train(was_training)
    result: dict[str, Any] = {}
    if predictions:
        pred, gold = torch.cat(predictions), torch.cat(targets)
        num_classes = len(model.task.config.labels)
        correct = float((pred == gold).sum())
        # macro-F1 needs per-class counts; gather them across processes
        counts = []
        for c in range(num_classes):
            counts += [
                float(((pred == c) & (gold == c)).sum()),
                float((pred == c).sum()),
                float((gold == c).sum()),
            ]
        totals = all_sum([correct, loss_sum, rows, *counts], process)
        correct, loss_sum, rows = totals[:3]
        f1s = []
        for c in range(num_classes):
            tp, npred, ngold = totals[3 + 3 * c : 6 + 3 * c]
            f1s.append(0.0 if tp == 0 else 2 * tp / (npred + ngold))
        result["accuracy"] = correct / max(rows, 1)
        result["macro_f1"] = sum(f1s) / num_classes
    else:
        loss_sum, rows = all_sum([loss_sum, rows], process)
    result["loss"] = loss_sum / max(rows, 1)
    result["examples"] = int(rows)
    return result
