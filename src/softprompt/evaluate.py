"""Evaluation: a batched, length-sorted scorer; the task says which counts to keep and
what figures they make (metric functions in `softprompt.metrics`).

Rows are scored longest first, in batches of similar length, so little compute goes to
padding and a batch too large for memory fails at once rather than at the end; per-row
scores are put back in the order the rows came in. The batch size may be "auto": the
largest that fits half the memory free now, from a short calibration
(`softprompt.estimate.eval_batch_size`). The progress bar counts rows, so its ETA holds
while batches get shorter.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from softprompt.data import Example
from softprompt.device import autocast
from softprompt.distributed import ProcessInfo, all_sum
from softprompt.errors import ConfigError, DataError
from softprompt.estimate import eval_batch_size
from softprompt.metrics import class_counts, metrics_from_counts  # noqa: F401  (re-exported)
from softprompt.tasks.text_metrics import generation_metrics, group_references


def length_order(examples: list[Example]) -> list[int]:
    """Indices of `examples`, longest text first (ties keep their order)."""
    return sorted(range(len(examples)), key=lambda i: -len(examples[i].text))


def length_sorted_batches(examples: list[Example], batch_size: int) -> list[list[Example]]:
    """Group similar lengths so padding (wasted compute) stays small."""
    ordered = [examples[i] for i in length_order(examples)]
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def resolve_batch_size(
    model: torch.nn.Module, examples: list[Example], batch_size: int | str
) -> int:
    """An int as given; "auto": sized to the memory free now (see the module docstring)."""
    if batch_size == "auto":
        return eval_batch_size(model, examples)
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1:
        return batch_size
    raise ConfigError(f"eval batch size: must be an integer >= 1 or auto, got {batch_size!r}")


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    examples: list[Example],
    *,
    batch_size: int | str = 32,
    process: ProcessInfo | None = None,
    bf16: bool = False,
    progress: bool = False,
    desc: str = "eval",
    sort: bool = True,
    keep_scores: bool = False,
    decode: bool = False,
) -> dict[str, Any]:
    """Loss (and accuracy / macro-F1 for classification) over `examples`.

    Under DDP each process scores its own share and the counts are summed,
    so every process returns the same numbers. `desc` names the bar (say, the split and
    task); `sort=False` scores the rows in the order given. `keep_scores` adds
    "scores": each row's class scores, in the order of `examples` (one process only).
    `decode` adds, for a generation task, BLEU, ROUGE-L and exact match of greedy outputs
    (`generation_scores`); validation during training leaves it off (decoding is slow)."""
    process = process or ProcessInfo()
    if keep_scores and process.world > 1:
        raise ConfigError("keep_scores: per-row scores are kept in single-process runs only")
    shard = examples[process.rank :: process.world]
    size = resolve_batch_size(model, shard, batch_size)
    order = length_order(shard) if sort else list(range(len(shard)))
    task = model.task
    loss_sum, rows = 0.0, 0
    counts = task.zero_counts()
    scores: list[torch.Tensor | None] = [None] * len(shard)
    was_training = model.training
    model.eval()
    show = progress and process.main
    with tqdm(total=len(shard), desc=desc, unit="row", leave=False, disable=not show) as bar:
        for start in range(0, len(order), size):
            picked = order[start : start + size]
            chunk = [shard[i] for i in picked]
            with autocast(model.device, bf16):
                out = model(model.collate(chunk))
            loss_sum += out.loss.item() * len(chunk)
            rows += len(chunk)
            counts = [a + b for a, b in zip(counts, task.metric_counts(out), strict=True)]
            if keep_scores:
                _keep(scores, picked, out.scores)
            bar.update(len(chunk))
    model.train(was_training)
    # every process sends a vector of the same length, even with an empty shard
    loss_sum, rows, *counts = all_sum([loss_sum, float(rows), *counts], process)
    if rows == 0:
        raise DataError("nothing to evaluate: the split has no rows; check the dataset's splits")
    result: dict[str, Any] = task.metrics(counts, rows)
    result["loss"] = loss_sum / max(rows, 1)
    result["examples"] = int(rows)
    if keep_scores:
        result["scores"] = [s.tolist() for s in scores if s is not None]
    if decode and getattr(task, "generates", False):
        result.update(generation_scores(model, examples, batch_size=size, progress=show, desc=desc))
    return result


@torch.no_grad()
def generation_scores(
    model: torch.nn.Module,
    examples: list[Example],
    *,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "generate",
) -> dict[str, float]:
    """BLEU, ROUGE-L and exact match of the model's greedy output for each distinct input
    of `examples`, against all of that input's targets (`softprompt.tasks.text_metrics`).

    Inputs are decoded longest first in batches of `batch_size`, so rows of a batch have
    similar lengths; one process decodes them all (no DDP share: a corpus BLEU needs
    every output)."""
    inputs, references = group_references(examples)
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    outputs: list[str] = [""] * len(inputs)
    was_training = model.training
    model.eval()
    with tqdm(total=len(inputs), desc=f"{desc} (decode)", unit="row", leave=False,
              disable=not progress) as bar:  # fmt: skip
        for start in range(0, len(order), batch_size):
            picked = order[start : start + batch_size]
            for index, row in zip(picked, model.predict([inputs[i] for i in picked]), strict=True):
                outputs[index] = row["text"]
            bar.update(len(picked))
    model.train(was_training)
    return {**generation_metrics(outputs, references), "generated_rows": len(inputs)}


def _keep(scores: list[torch.Tensor | None], picked: list[int], out: torch.Tensor | None) -> None:
    """Each row's (C,) class scores into its place in the input order."""
    if out is None or out.dim() != 2:
        raise ConfigError("keep_scores: per-row scores are for classification tasks only")
    for row, index in enumerate(picked):
        scores[index] = out[row].float().cpu()
