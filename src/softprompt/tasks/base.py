"""The task interface and its config; concrete tasks register by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from softprompt.backbones import Backbone
from softprompt.data import Example
from softprompt.errors import ConfigError
from softprompt.inject import Injector, Prompt


@dataclass
class TaskConfig:
    """How a dataset is framed for the frozen model.

    `head`: "verbalizer" scores label words with the LM head (causal LMs only),
    "linear" trains a small classifier on pooled states; "auto" picks verbalizer
    for causal LMs and linear for encoders. `verbalizer` maps each label to its
    label words (default: " " + label name).
    """

    kind: str = "classification"
    labels: list[str] = field(default_factory=list)
    template: str = "{text}"
    verbalizer: dict[str, list[str]] | None = None
    head: str = "auto"
    pool: str = "auto"
    max_text_tokens: int = 200
    max_new_tokens: int = 32
    image_size: int = 112  # vision backbones: images are resized to this square (tasks/image.py)

    def __post_init__(self) -> None:
        if self.kind not in ("classification", "generation"):
            raise ConfigError(f"task.kind: must be classification or generation, got {self.kind!r}")
        if self.head not in ("auto", "verbalizer", "linear"):
            raise ConfigError(f"task.head: must be auto, verbalizer or linear, got {self.head!r}")
        if self.pool not in ("auto", "mean", "cls", "last"):
            raise ConfigError(f"task.pool: must be auto, mean, cls or last, got {self.pool!r}")
        if self.kind == "classification" and len(self.labels) < 2:
            raise ConfigError(f"task.labels: need at least 2 labels, got {self.labels!r}")
        if self.verbalizer is not None:
            self.verbalizer = {
                k: [v] if isinstance(v, str) else list(v) for k, v in self.verbalizer.items()
            }
            missing = [label for label in self.labels if label not in self.verbalizer]
            extra = [key for key in self.verbalizer if key not in self.labels]
            if missing or extra:
                raise ConfigError(
                    f"task.verbalizer: must give words for exactly the labels {self.labels}; "
                    f"missing {missing}, unknown {extra}"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TaskOutput:
    loss: torch.Tensor  # () mean over rows
    scores: torch.Tensor | None = None  # (B, C) class scores, classification only
    targets: torch.Tensor | None = None  # (B,) class index


class Task(nn.Module):
    """Turns examples into tensors and hidden states into a loss and scores."""

    config: TaskConfig

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(
        self, injector: Injector, prompt: Prompt, batch: dict[str, torch.Tensor]
    ) -> TaskOutput:
        raise NotImplementedError

    def label_token_ids(self) -> list[list[int]]:
        """Token ids of each label's first label word, for the `labels` prompt init."""
        return []

    def predict(
        self, injector: Injector, prompt: Prompt, examples: list[Example]
    ) -> list[dict[str, Any]]:
        raise NotImplementedError


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists: -> ids (B, T), mask (B, T)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


class TemplatedTask(Task):
    """Shared set-up of tasks that fill a template and tokenize it."""

    def __init__(self, config: TaskConfig, backbone: Backbone) -> None:
        from softprompt.tasks.template import Template

        super().__init__()
        self.config = config
        self.tokenizer = backbone.tokenizer
        self.pad_id = backbone.spec.pad_token_id
        self.template = Template(config.template)

    def contexts(self, examples: list[Example]) -> list[list[int]]:
        """Filled-template token ids per example, text cut to `max_text_tokens`."""
        budget = self.config.max_text_tokens
        return [self.template.encode(self.tokenizer, e.text, budget) for e in examples]

    def with_targets(
        self, batch: dict[str, torch.Tensor], examples: list[Example]
    ) -> dict[str, torch.Tensor]:
        """Add class indices when every example carries a known label (not at predict time)."""
        if all(e.label in self.config.labels for e in examples):
            batch["targets"] = label_index(self.config.labels, examples)
        return batch


def continuation_batch(
    contexts: list[list[int]], continuations: list[list[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Rows `context + continuation[:-1]`, scored at the continuation's tokens.

    Token j of a continuation is predicted by the hidden state just before it,
    at position len(context) - 1 + j; only those positions get logits."""
    rows = [c + t[:-1] for c, t in zip(contexts, continuations, strict=True)]
    positions = [
        [len(c) - 1 + j for j in range(len(t))]
        for c, t in zip(contexts, continuations, strict=True)
    ]
    ids, mask = pad_right(rows, pad_id)
    pos, score_mask = pad_right(positions, 0)
    tok, _ = pad_right(continuations, 0)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "score_positions": pos,
        "score_tokens": tok,
        "score_mask": score_mask,
    }


def continuation_log_probs(
    hidden: torch.Tensor, batch: dict[str, torch.Tensor], lm_head: torch.Tensor
) -> torch.Tensor:
    """(R, T, d) hidden states -> (R, K) log-probs of each continuation token, 0 at padding."""
    positions = batch["score_positions"]  # (R, K)
    picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (R, K, d)
    log_probs = (picked @ lm_head.T).log_softmax(-1)  # (R, K, V)
    token_lp = log_probs.gather(-1, batch["score_tokens"].unsqueeze(-1)).squeeze(-1)  # (R, K)
    return token_lp * batch["score_mask"]


def label_index(labels: list[str], examples: list[Example]) -> torch.Tensor:
    lookup = {label: i for i, label in enumerate(labels)}
    unknown = [e.label for e in examples if e.label not in lookup]
    if unknown:
        raise ConfigError(f"task.labels: label {unknown[0]!r} is not one of {labels}")
    return torch.tensor([lookup[e.label] for e in examples], dtype=torch.long)  # (B,)


_TASKS: list[
    tuple[Callable[[TaskConfig, Backbone], bool], Callable[[TaskConfig, Backbone], Task]]
] = []


def register_task(applies: Callable[[TaskConfig, Backbone], bool]):
    """Register a task class for the configs (and backbones) it handles."""

    def decorate(task_class):
        _TASKS.append((applies, task_class))
        return task_class

    return decorate


def build_task(config: TaskConfig, backbone: Backbone) -> Task:
    from softprompt.tasks import classification, generation, image  # noqa: F401  (registers)

    for applies, task_class in _TASKS:
        if applies(config, backbone):
            return task_class(config, backbone)
    raise ConfigError(
        f"task: no task handles kind={config.kind!r}, head={config.head!r} "
        f"on a {backbone.spec.kind} backbone (verbalizers need a causal LM; try task.head: linear)"
    )
