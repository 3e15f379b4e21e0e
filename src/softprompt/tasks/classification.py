"""Classification by label words (cloze) or by a small head.

`VerbalizerTask` scores only what the loss needs: the label-word columns of the
output projection at the answer position, a (B, d) x (d, W) product instead of
PEFT's (B, T, d) x (d, V) over every position (performance.md #2). Label words
of several tokens are scored exactly as sequence log-probabilities, all after one
pass of the context (tasks/word_tree.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from softprompt.backbones import Backbone
from softprompt.data import Example
from softprompt.data.soft import SoftExample
from softprompt.errors import DataError
from softprompt.inject import Injector
from softprompt.inject.label_words import label_logits
from softprompt.metrics import class_counts, metrics_from_counts
from softprompt.tasks.base import (
    TaskConfig,
    TaskOutput,
    TemplatedTask,
    pad_right,
    register_task,
)
from softprompt.tasks.verbalizer import Verbalizer
from softprompt.tasks.word_tree import WordTree


def class_loss(scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> TaskOutput:
    """Cross-entropy over the task's own classes when the batch carries targets; against
    `soft_targets` (B, C) probabilities when it has them (distillation: KL to the teacher
    up to the teacher's entropy, a constant)."""
    targets, soft = batch.get("targets"), batch.get("soft_targets")
    if soft is not None:
        log_probs = scores.float().log_softmax(-1)  # (B, C)
        loss = -(soft.to(log_probs) * log_probs).sum(-1).mean()
        return TaskOutput(loss=loss, scores=scores, targets=targets)
    if targets is None:
        return TaskOutput(loss=scores.new_zeros(()), scores=scores)
    return TaskOutput(loss=F.cross_entropy(scores.float(), targets), scores=scores, targets=targets)


def soft_targets(labels: list[str], examples: list[Example]) -> torch.Tensor:
    """(B, C) target probabilities: a `SoftExample`'s own, a labelled row's one-hot."""
    rows = [
        list(e.probs) if isinstance(e, SoftExample) else [float(e.label == c) for c in labels]
        for e in examples
    ]
    wrong = next((r for r in rows if len(r) != len(labels)), None)
    if wrong is not None:
        raise DataError(f"soft label {wrong}: needs one probability per label of {labels}")
    return torch.tensor(rows, dtype=torch.float32)


class ClassificationTask(TemplatedTask):
    """Scores (B, C) over `config.labels`; predictions are their softmax."""

    def with_targets(
        self, batch: dict[str, torch.Tensor], examples: list[Example]
    ) -> dict[str, torch.Tensor]:
        """Class indices, plus `soft_targets` when any row is a `SoftExample`."""
        batch = super().with_targets(batch, examples)
        if "targets" in batch and any(isinstance(e, SoftExample) for e in examples):
            batch["soft_targets"] = soft_targets(self.config.labels, examples)
        return batch

    def describe(
        self, output: TaskOutput, batch: dict[str, torch.Tensor] | None
    ) -> list[dict[str, Any]]:
        return self.describe_scores(output.scores)

    def zero_counts(self) -> list[float]:
        return [0.0] * (1 + 3 * len(self.config.labels))

    def metric_counts(self, output: TaskOutput) -> list[float]:
        """[correct, then per class: true positives, predicted, gold]."""
        classes = len(self.config.labels)
        return class_counts(output.scores.argmax(-1), output.targets, classes)

    def metrics(self, counts: list[float], rows: float) -> dict[str, float]:
        return metrics_from_counts(counts, rows)

    def describe_scores(self, scores: torch.Tensor) -> list[dict[str, Any]]:
        """(B, C) scores -> one {label, scores} record per row."""
        probs = scores.float().softmax(-1)  # (B, C)
        labels = self.config.labels
        return [
            {
                "label": labels[int(row.argmax())],
                "scores": {label: float(p) for label, p in zip(labels, row, strict=True)},
            }
            for row in probs
        ]


@register_task("verbalizer")
class VerbalizerTask(ClassificationTask):
    def __init__(self, config: TaskConfig, backbone: Backbone) -> None:
        super().__init__(config, backbone)
        self.verbalizer = Verbalizer.build(config.labels, config.verbalizer, self.tokenizer)
        self.words = self.verbalizer.words  # per class: list of strings
        self.word_ids = self.verbalizer.sequences  # class -> word -> ids
        self.single_token = self.verbalizer.single_token
        self.first_tokens = self.verbalizer.first_tokens  # (W,)
        self.tree = WordTree([ids for ws in self.word_ids for ids in ws])
        self.label_rows: Callable[[], torch.Tensor] | None = None  # see use_label_embeddings

    def label_token_ids(self) -> list[list[int]]:
        return [ws[0] for ws in self.word_ids]

    def use_label_embeddings(self, rows: Callable[[], torch.Tensor]) -> None:
        """Score class c by its label token's output row `rows()[c]` (C, d), learned by the
        method (DART), instead of the label words' frozen rows: one token per class, the
        first token of its first word. Every scoring path (training, mixed batches,
        serving) goes through `score`, so they all see the learned rows."""
        self.label_rows = rows

    # -- collation ---------------------------------------------------------
    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """Contexts only when one position is read (one-token words, or learned label
        rows, which score the answer state alone); else each row with the word tree."""
        contexts = self.contexts(examples)
        batch = (
            self._collate_single(contexts)
            if self.single_token or self.label_rows is not None
            else self.tree.collate(contexts, self.pad_id)
        )
        return self.with_targets(self.with_slots(batch, examples), examples)

    def _collate_single(self, contexts: list[list[int]]) -> dict[str, torch.Tensor]:
        ids, mask = pad_right(contexts, self.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "answer_index": mask.sum(1) - 1}

    # -- scoring -----------------------------------------------------------
    def score(
        self, injector: Injector, hidden: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> TaskOutput:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if self.label_rows is not None:
            answer = hidden[rows, batch["answer_index"]]  # (B, d)
            firsts = [ids[0] for ids in self.label_token_ids()]  # (C,)
            scores = label_logits(injector.backbone, answer, self.label_rows(), firsts)
            return class_loss(scores, batch)  # (B, C)
        if self.single_token:
            answer = hidden[rows, batch["answer_index"]]  # (B, d)
            words = torch.tensor(self.first_tokens, device=hidden.device)  # (W,)
            word_scores = injector.logits(answer, words)  # (B, W)
        else:
            word_scores = self.tree.log_probs(hidden, batch["answer_index"], injector)  # (B, W)
        return class_loss(self._class_scores(word_scores), batch)

    def _class_scores(self, word_scores: torch.Tensor) -> torch.Tensor:
        """(B, W) scores of all label words -> (B, C): log-sum-exp over each class's words."""
        return self.verbalizer.per_class(word_scores)  # (B, C)


@register_task("linear")
class HeadTask(ClassificationTask):
    """A linear classifier on pooled hidden states; trained together with the prompt."""

    def __init__(self, config: TaskConfig, backbone: Backbone) -> None:
        super().__init__(config, backbone)
        self.encoder = backbone.spec.kind == "encoder"
        # an encoder sees [CLS] ... [SEP] as in pretraining; the injector puts the prompt after [CLS]
        sep = getattr(backbone.tokenizer, "sep_token_id", None)
        sep = sep if sep is not None else backbone.spec.eos_token_id
        self.front = [backbone.spec.bos_token_id] if backbone.spec.bos_token_id is not None else []
        self.back = [sep] if sep is not None else []
        self.pool = config.pool if config.pool != "auto" else ("mean" if self.encoder else "last")
        self.head = nn.Linear(backbone.spec.hidden_size, len(config.labels))
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # seeded so two runs with one config start identical
            self.head.weight.normal_(0.0, 0.02, generator=generator)  # built on the CPU
            self.head.bias.zero_()

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        rows = self.contexts(examples)
        offset = len(self.front) if self.encoder else 0
        if self.encoder:
            rows = [self.front + r + self.back for r in rows]
        ids, mask = pad_right(rows, self.pad_id)
        batch = self.with_slots({"input_ids": ids, "attention_mask": mask}, examples, offset)
        return self.with_targets(batch, examples)

    def pooled(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, d)."""
        if self.pool == "cls":
            return hidden[:, 0]
        if self.pool == "last":
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            return hidden[rows, mask.sum(1) - 1]
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1)

    def score(
        self, injector: Injector, hidden: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> TaskOutput:
        pooled = self.pooled(hidden, batch["attention_mask"])  # (B, d)
        return class_loss(self.head(pooled.to(self.head.weight.dtype)), batch)  # (B, C)
