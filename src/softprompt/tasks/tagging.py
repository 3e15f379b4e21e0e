"""Sequence labelling: a tag per word from a linear head over token states (P-tuning v2).

Each word is tokenized on its own and its first sub-token carries the word's tag, as
P-tuning v2 and the usual BERT NER recipe do; the other sub-tokens and the special
tokens are not scored. With deep prompts (prefix-tuning on an encoder) this is
P-tuning v2's sequence labelling; with `none` it is the head-only baseline. Entities
are scored by exact type and span (seqeval's default mode, `softprompt.metrics`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from softprompt.backbones import Backbone
from softprompt.data import Example
from softprompt.errors import ConfigError, DataError
from softprompt.inject import Injector, Prompt, RowPrompts
from softprompt.metrics import entities, entity_counts, entity_f1
from softprompt.tasks.base import Task, TaskConfig, TaskOutput, pad_right, register_task

IGNORE = -100


@register_task("tagging")
class TaggingTask(Task):
    def __init__(self, config: TaskConfig, backbone: Backbone) -> None:
        super().__init__()
        if config.template != "{text}":
            raise ConfigError("task.template: a tagging task takes the words as they are: {text}")
        self.config = config
        self.tokenizer = backbone.tokenizer
        self.pad_id = backbone.spec.pad_token_id
        self.encoder = backbone.spec.kind == "encoder"
        sep = getattr(backbone.tokenizer, "sep_token_id", None)
        sep = sep if sep is not None else backbone.spec.eos_token_id
        front = backbone.spec.bos_token_id
        self.front = [front] if front is not None and self.encoder else []
        self.back = [sep] if sep is not None and self.encoder else []
        self.index = {tag: i for i, tag in enumerate(config.labels)}
        self.head = nn.Linear(backbone.spec.hidden_size, len(config.labels))
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # seeded so two runs with one config start identical
            self.head.weight.normal_(0.0, 0.02, generator=generator)  # built on the CPU
            self.head.bias.zero_()

    def _word_ids(self, word: str, first: bool) -> list[int]:
        # a decoder's BPE marks word starts with a space; WordPiece ignores it
        text = word if first or self.encoder else " " + word
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] or [self.pad_id]

    def _row(self, example: Example, known: bool) -> tuple[list[int], list[int], list[int]]:
        """ids, the position of each word's first sub-token, and the tag ids (if known)."""
        words = example.text.split(" ")
        tags = example.label.split(" ") if known else []
        if known and len(tags) != len(words):
            raise DataError(
                f"tagging: {len(words)} words but {len(tags)} tags in {example.text[:60]!r}"
            )
        ids, starts = list(self.front), []
        for i, word in enumerate(words):
            piece = self._word_ids(word, i == 0)
            if len(ids) + len(piece) > self.config.max_text_tokens + len(self.front):
                break  # the rest of an over-long sentence is cut (and not scored)
            starts.append(len(ids))
            ids += piece
        unknown = sorted({t for t in tags if t not in self.index})
        if unknown:
            raise DataError(f"tagging: tags {unknown} are not in task.labels {self.config.labels}")
        return ids + self.back, starts, [self.index[t] for t in tags[: len(starts)]]

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        known = all(e.label for e in examples)
        rows = [self._row(e, known) for e in examples]
        ids, mask = pad_right([r[0] for r in rows], self.pad_id)
        targets = torch.full(ids.shape, IGNORE, dtype=torch.long)  # (B, T)
        starts = torch.zeros(ids.shape, dtype=torch.bool)  # (B, T)
        for i, (_, first, tags) in enumerate(rows):
            starts[i, first] = True
            if known:
                targets[i, first] = torch.tensor(tags, dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask, "word_starts": starts}
        batch["words"] = [e.text.split(" ") for e in examples]  # for the entities' text
        return batch | ({"targets": targets} if known else {})

    def score(
        self, injector: Injector, hidden: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> TaskOutput:
        logits = self.head(hidden.to(self.head.weight.dtype))  # (B, T, C)
        targets = batch.get("targets")
        if targets is None:
            return TaskOutput(loss=logits.new_zeros(()), scores=logits)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)
        return TaskOutput(loss=loss, scores=logits, targets=targets)

    def _tags(self, logits: torch.Tensor, starts: torch.Tensor) -> list[list[str]]:
        predicted = logits.argmax(-1)  # (B, T)
        return [
            [self.config.labels[int(t)] for t in row[keep]]
            for row, keep in zip(predicted, starts, strict=True)
        ]

    def zero_counts(self) -> list[float]:
        return [0.0] * 5  # tokens right, tokens scored, entity tp, predicted, gold

    def metric_counts(self, output: TaskOutput) -> list[float]:
        scored = output.targets != IGNORE  # (B, T)
        right = float(((output.scores.argmax(-1) == output.targets) & scored).sum())
        predicted = self._tags(output.scores, scored)
        gold = [
            [self.config.labels[int(t)] for t in row[keep]]
            for row, keep in zip(output.targets, scored, strict=True)
        ]
        return [right, float(scored.sum()), *entity_counts(gold, predicted)]

    def metrics(self, counts: list[float], rows: float) -> dict[str, float]:
        right, scored, tp, said, truth = counts
        return {"accuracy": right / max(scored, 1), **entity_f1(tp, said, truth)}

    def predict(
        self, injector: Injector, prompts: Prompt | RowPrompts, examples: list[Example]
    ) -> list[dict[str, Any]]:
        batch = self.collate([Example(e.text, "") for e in examples])
        return self.describe(self.forward(injector, prompts, batch), batch)

    def describe(
        self, output: TaskOutput, batch: dict[str, torch.Tensor] | None
    ) -> list[dict[str, Any]]:
        """Per row: a tag per word and the entities they make."""
        results = []
        for row, tags in enumerate(self._tags(output.scores, batch["word_starts"])):
            words = batch["words"][row]
            spans = sorted(entities(tags), key=lambda chunk: chunk[1])
            found = [{"type": k, "text": " ".join(words[a : b + 1])} for k, a, b in spans]
            results.append({"tags": tags, "entities": found})
        return results
