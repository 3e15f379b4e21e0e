"""Soft prompt tuning (Lester, Al-Rfou & Constant 2021, arXiv:2104.08691).

n free embedding vectors placed in front of the input (after BOS) of a frozen
model. The only trainable tensor is `embeddings` (n, d); it is shared by every
row, so a causal decoder computes it once per step (see inject/causal.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from softprompt import init as prompt_init
from softprompt.errors import ConfigError
from softprompt.inject import Prompt
from softprompt.methods.registry import MethodContext, register_method


@dataclass
class SoftPromptConfig:
    """`init` is one of random, vocab, text, labels; `init_text` is used by `text`."""

    n_tokens: int = 20
    init: str = "vocab"
    init_text: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_tokens < 1:
            raise ConfigError(f"method.n_tokens: must be >= 1, got {self.n_tokens}")
        if self.init not in prompt_init.INITIALIZERS:
            raise ConfigError(
                f"method.init: unknown init {self.init!r}; "
                f"choose one of {', '.join(prompt_init.INITIALIZERS)}"
            )
        if self.init == "text" and not self.init_text:
            raise ConfigError("method.init_text: required when method.init is 'text'")


@register_method("soft-prompt", SoftPromptConfig)
class SoftPrompt(nn.Module):
    def __init__(self, config: SoftPromptConfig, context: MethodContext) -> None:
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(config.seed)
        initial = prompt_init.initialize(
            config.init,
            n_tokens=config.n_tokens,
            backbone=context.backbone,
            generator=generator,
            text=config.init_text,
            label_token_ids=context.label_token_ids,
        )  # (n, d)
        self.embeddings = nn.Parameter(initial.clone())

    def forward(self, batch_size: int) -> Prompt:
        return Prompt(embeds=self.embeddings.unsqueeze(0))  # (1, n, d)
