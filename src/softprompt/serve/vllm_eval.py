"""`softprompt eval --engine vllm`: a classification prompt scored on a dataset split by a
vLLM server, with the figures `softprompt eval` gives on its own engine.

Each row's class scores come from `VllmEngine.word_scores` (the label words' exact
log-probs, multi-token words included), folded per class by the task's own verbalizer,
so accuracy, macro-F1 and the loss are computed from the same (N, C) scores as
`softprompt.evaluate` computes from its forward passes: the two agree to float precision
(`tests/serve/test_vllm.py`). Rows are sent `workers` at a time: vLLM batches concurrent
requests itself, so the work of batching and padding stays on the engine that does it best.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from softprompt.data import Example
from softprompt.errors import DataError
from softprompt.metrics import class_counts, metrics_from_counts
from softprompt.model import PromptModel
from softprompt.serve.vllm import NotForVllm, VllmEngine, VllmTask, model_folder


def class_targets(task: VllmTask, examples: list[Example]) -> torch.Tensor:
    """(N,) label indices; a label the prompt does not know is one clear error."""
    labels = list(task.model.task.config.labels)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({e.label for e in examples} - index.keys())
    if unknown:
        raise DataError(
            f"eval --engine vllm: labels {unknown[:5]} are not the prompt's labels {labels}; "
            "pass the dataset and --label-column it was trained with"
        )
    return torch.tensor([index[e.label] for e in examples])  # (N,)


def score_rows(
    engine: VllmEngine, task: VllmTask, examples: list[Example], *, workers: int = 32,
    progress: bool = False,
) -> torch.Tensor:  # fmt: skip
    """(N, C) class scores (log-sum-exp over each class's words), in the rows' order."""
    if task.generates:
        raise NotForVllm(
            f"task {task.name!r} generates text: eval --engine vllm scores classification "
            "prompts; score generation with softprompt's own engine (eval without --engine)"
        )
    words: Callable[[Example], list[float]] = lambda e: engine.word_scores(task, e.text)  # noqa: E731
    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval") as pool,
        tqdm(total=len(examples), desc="eval (vLLM)", unit="row", disable=not progress) as bar,
    ):
        rows = []
        for row in pool.map(words, examples):
            rows.append(row)
            bar.update(1)
    word_scores = torch.tensor(rows, dtype=torch.float64)  # (N, W)
    return task.model.task._class_scores(word_scores)  # (N, C)


def metrics_of(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """accuracy, macro-F1 and the cross-entropy loss, as `softprompt.evaluate` reports them."""
    if len(targets) == 0:
        raise DataError("nothing to evaluate: the split has no rows; check the dataset's splits")
    counts = class_counts(scores.argmax(-1), targets, scores.shape[-1])
    result: dict[str, Any] = metrics_from_counts(counts, len(targets))
    result["loss"] = float(F.cross_entropy(scores.float(), targets))
    result["examples"] = len(targets)
    return result


def evaluate_on_vllm(
    engine: VllmEngine, task: VllmTask, examples: list[Example], *, workers: int = 32,
    progress: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """`evaluate`'s figures for `examples`, every forward pass done by the engine's vLLM."""
    targets = class_targets(task, examples)  # (N,) checked before any request is sent
    scores = score_rows(engine, task, examples, workers=workers, progress=progress)
    return metrics_of(scores, targets)


def evaluate_model_on_vllm(
    model: PromptModel, examples: list[Example], url: str, *, workers: int = 32
) -> dict[str, Any]:
    """The command's path: a loaded prompt (fingerprint already checked against its
    backbone) scored by the vLLM at `url`, which must serve that backbone's folder."""
    targets_known = model.task.config.labels  # fail on a generation prompt before connecting
    if not targets_known:
        raise NotForVllm(
            "eval --engine vllm scores classification prompts; score generation with "
            "softprompt's own engine (eval without --engine)"
        )
    folder = model_folder(model.backbone.name)
    engine = VllmEngine(folder, url, backbone=model.backbone, workers=workers)
    try:
        task = engine.adopt("eval", model.eval())
        return evaluate_on_vllm(engine, task, examples, workers=workers, progress=True)
    finally:
        engine.close()
