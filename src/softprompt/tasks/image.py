"""Image classification on a vision backbone: a linear head on [CLS] (or the patch mean).

Examples carry image references (`softprompt.data.images`); `collate` opens and
preprocesses them to (B, 3, S, S) pixels at `config.image_size`, and the head is
trained together with the visual prompt (VPT's recipe) or alone (the linear probe,
method `none`: `softprompt.recipes.baselines.head_only_baseline`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from softprompt.backbones import Backbone
from softprompt.data import Example
from softprompt.data.images import open_image
from softprompt.errors import ConfigError
from softprompt.inject import Injector, Prompt
from softprompt.metrics import class_counts, metrics_from_counts
from softprompt.tasks.base import Task, TaskConfig, TaskOutput, label_index, register_task


@register_task("image")
class ImageTask(Task):
    """`pool`: auto/cls -> the final [CLS] state; mean -> the mean of the patch states."""

    def __init__(self, config: TaskConfig, backbone: Backbone) -> None:
        super().__init__()
        if config.head not in ("auto", "linear"):
            raise ConfigError(
                f"task.head: a vision backbone has no label words; use linear, not {config.head!r}"
            )
        if config.chat_template:
            raise ConfigError("task.chat_template: images have no chat template; leave it out")
        if config.pool not in ("auto", "cls", "mean"):
            raise ConfigError(f"task.pool: use cls or mean on images, not {config.pool!r}")
        self.config = config
        self.preprocess = backbone.tokenizer  # an ImagePreprocessor
        self.size = self.preprocess.check_size(config.image_size)
        self.pool = "mean" if config.pool == "mean" else "cls"
        self.head = nn.Linear(backbone.spec.hidden_size, len(config.labels))
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # seeded so two runs with one config start identical
            self.head.weight.normal_(0.0, 0.02, generator=generator)
            self.head.bias.zero_()

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        pixels = self.preprocess([open_image(e.text) for e in examples], self.size)
        batch = {"pixel_values": pixels}  # (B, 3, S, S)
        if all(e.label in self.config.labels for e in examples):
            batch["targets"] = label_index(self.config.labels, examples)
        return batch

    def forward(
        self, injector: Injector, prompt: Prompt, batch: dict[str, torch.Tensor]
    ) -> TaskOutput:
        cls = self.pool == "cls"  # then the last layer computes the front rows only
        states = injector.image_states(prompt, batch["pixel_values"], front_only=cls)
        pooled = states[:, 0] if cls else states[:, injector.front :].mean(1)  # (B, d)
        scores = self.head(pooled)  # (B, C)
        targets = batch.get("targets")
        loss = F.cross_entropy(scores, targets) if targets is not None else scores.new_zeros(())
        return TaskOutput(loss=loss, scores=scores, targets=targets)

    def zero_counts(self) -> list[float]:
        return [0.0] * (1 + 3 * len(self.config.labels))

    def metric_counts(self, output: TaskOutput) -> list[float]:
        return class_counts(output.scores.argmax(-1), output.targets, len(self.config.labels))

    def metrics(self, counts: list[float], rows: float) -> dict[str, float]:
        return metrics_from_counts(counts, rows)

    def describe(
        self, output: TaskOutput, batch: dict[str, torch.Tensor] | None
    ) -> list[dict[str, Any]]:
        return self._described(output.scores)

    def predict(
        self, injector: Injector, prompt: Prompt, examples: list[Example]
    ) -> list[dict[str, Any]]:
        return self._described(self.forward(injector, prompt, self.collate(examples)).scores)

    def _described(self, scores: torch.Tensor) -> list[dict[str, Any]]:
        labels = self.config.labels
        return [
            {
                "label": labels[int(row.argmax())],
                "scores": {label: float(p) for label, p in zip(labels, row, strict=True)},
            }
            for row in scores.float().softmax(-1)
        ]
