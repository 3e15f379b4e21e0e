"""Classification by label words (cloze) or by a small head.

`VerbalizerTask` scores only what the loss needs: the label-word rows of the
output matrix at the answer position, a (B, d) x (d, W) product instead of
PEFT's (B, T, d) x (d, V) over every position (performance.md #2). Label words
of several tokens are scored exactly as sequence log-probabilities, one row per
(example, class) pair, at only the positions of those tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from softprompt.backbones import Backbone
from softprompt.data import Example
from softprompt.errors import ConfigError
from softprompt.inject import Injector, Prompt
from softprompt.tasks.base import (
    TaskConfig,
    TaskOutput,
    TemplatedTask,
    pad_right,
    register_task,
)
from softprompt.tasks.word_tree import WordTree


class ClassificationTask(TemplatedTask):
    """Scores (B, C) over `config.labels`; predictions are their softmax."""

    def predict(
        self, injector: Injector, prompt: Prompt, examples: list[Example]
    ) -> list[dict[str, Any]]:
        scores = self.forward(injector, prompt, self.collate(examples)).scores  # (B, C)
        probs = scores.float().softmax(-1)  # (B, C)
        labels = self.config.labels
        return [
            {
                "label": labels[int(row.argmax())],
                "scores": {label: float(p) for label, p in zip(labels, row, strict=True)},
            }
            for row in probs
        ]


@register_task(
    lambda c, b: (
        c.kind == "classification"
        and b.spec.kind == "causal-lm"
        and c.head in ("auto", "verbalizer")
    )
)
class VerbalizerTask(ClassificationTask):
    def __init__(self, config: TaskConfig, backbone: Backbone) -> None:
        super().__init__(config, backbone)
        words = config.verbalizer or {label: [" " + label] for label in config.labels}
        self.words = [words[label] for label in config.labels]  # per class: list of strings
        self.word_ids = [[self._ids(w) for w in ws] for ws in self.words]  # class -> word -> ids
        self.single_token = all(len(ids) == 1 for ws in self.word_ids for ids in ws)
        self.tree = WordTree([ids for ws in self.word_ids for ids in ws])
        object.__setattr__(self, "lm_head", backbone.output_embeddings())  # (V, d), frozen

    def _ids(self, word: str) -> list[int]:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(
                f"task.verbalizer: label word {word!r} has no tokens; give a non-empty word"
            )
        return ids

    def label_token_ids(self) -> list[list[int]]:
        return [ws[0] for ws in self.word_ids]

    # -- collation ---------------------------------------------------------
    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        contexts = self.contexts(examples)
        batch = (
            self._collate_single(contexts)
            if self.single_token
            else self.tree.collate(contexts, self.pad_id)
        )
        return self.with_targets(batch, examples)

    def _collate_single(self, contexts: list[list[int]]) -> dict[str, torch.Tensor]:
        ids, mask = pad_right(contexts, self.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "answer_index": mask.sum(1) - 1}

    # -- scoring -----------------------------------------------------------
    def forward(
        self, injector: Injector, prompt: Prompt, batch: dict[str, torch.Tensor]
    ) -> TaskOutput:
        scores = (
            self._single(injector, prompt, batch)
            if self.single_token
            else self._multi(injector, prompt, batch)
        )
        targets = batch.get("targets")
        loss = F.cross_entropy(scores, targets) if targets is not None else scores.new_zeros(())
        return TaskOutput(loss=loss, scores=scores, targets=targets)

    def _class_scores(self, word_scores: torch.Tensor) -> torch.Tensor:
        """(B, W) scores of all label words -> (B, C): log-sum-exp over each class's words."""
        per_class, start = [], 0
        for words in self.word_ids:
            per_class.append(word_scores[:, start : start + len(words)].logsumexp(-1))
            start += len(words)
        return torch.stack(per_class, dim=-1)  # (B, C)

    def _single(
        self, injector: Injector, prompt: Prompt, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        hidden = injector.hidden_states(
            prompt, batch["input_ids"], batch["attention_mask"]
        )  # (B, T, d)
        rows = torch.arange(hidden.shape[0])
        answer = hidden[rows, batch["answer_index"]]  # (B, d)
        word_rows = torch.tensor([ids[0] for ws in self.word_ids for ids in ws])
        logits = answer @ self.lm_head[word_rows].T  # (B, W)
        return self._class_scores(logits)

    def _multi(
        self, injector: Injector, prompt: Prompt, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        hidden = injector.hidden_states(
            prompt, batch["input_ids"], batch["attention_mask"], batch["positions"]
        )  # (B, T, d)
        word_scores = self.tree.log_probs(hidden, batch["answer_index"], self.lm_head)  # (B, W)
        return self._class_scores(word_scores)  # (B, C)


@register_task(
    lambda c, b: (
        c.kind == "classification"
        and b.spec.kind != "vision"  # images: tasks/image.py
        and (c.head == "linear" or (c.head == "auto" and b.spec.kind == "encoder"))
    )
)
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
            self.head.weight.normal_(0.0, 0.02, generator=generator)
            self.head.bias.zero_()

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        rows = self.contexts(examples)
        if self.encoder:
            rows = [self.front + r + self.back for r in rows]
        ids, mask = pad_right(rows, self.pad_id)
        return self.with_targets({"input_ids": ids, "attention_mask": mask}, examples)

    def pooled(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, d)."""
        if self.pool == "cls":
            return hidden[:, 0]
        if self.pool == "last":
            return hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1]
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1)

    def forward(
        self, injector: Injector, prompt: Prompt, batch: dict[str, torch.Tensor]
    ) -> TaskOutput:
        hidden = injector.hidden_states(
            prompt, batch["input_ids"], batch["attention_mask"]
        )  # (B, T, d)
        scores = self.head(self.pooled(hidden, batch["attention_mask"]))  # (B, C)
        targets = batch.get("targets")
        loss = F.cross_entropy(scores, targets) if targets is not None else scores.new_zeros(())
        return TaskOutput(loss=loss, scores=scores, targets=targets)
