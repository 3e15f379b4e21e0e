"""Evaluation: a batched, length-sorted scorer; the task says which counts to keep and
what figures they make (metric functions in `softprompt.metrics`)."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from softprompt.data import Example
from softprompt.device import autocast
from softprompt.distributed import ProcessInfo, all_sum
from softprompt.errors import DataError
from softprompt.metrics import class_counts, metrics_from_counts  # noqa: F401  (re-exported)


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
    task = model.task
    loss_sum, rows = 0.0, 0
    counts = task.zero_counts()
    was_training = model.training
    model.eval()
    chunks = length_sorted_batches(shard, batch_size)
    for chunk in tqdm(chunks, desc="eval", leave=False, disable=not (progress and process.main)):
        with autocast(model.device, bf16):
            out = model(model.collate(chunk))
        loss_sum += out.loss.item() * len(chunk)
        rows += len(chunk)
        counts = [a + b for a, b in zip(counts, task.metric_counts(out), strict=True)]
    model.train(was_training)
    # every process sends a vector of the same length, even with an empty shard
    loss_sum, rows, *counts = all_sum([loss_sum, float(rows), *counts], process)
    if rows == 0:
        raise DataError("nothing to evaluate: the split has no rows; check the dataset's splits")
    result: dict[str, Any] = task.metrics(counts, rows)
    result["loss"] = loss_sum / max(rows, 1)
    result["examples"] = int(rows)
    return result
