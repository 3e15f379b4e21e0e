"""Soft prompt tuning (Lester, Al-Rfou & Constant 2021, arXiv:2104.08691).

n free embedding vectors placed in front of the input (after BOS) of a frozen
model. The only trainable tensor is `embeddings` (n, d); it is shared by every
row, so a causal decoder computes it once per step (see inject/causal.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from softprompt.inject import Prompt
from softprompt.methods.registry import MethodContext, register_method
from softprompt.methods.virtual_tokens import VirtualTokensConfig, initial_embeddings


@dataclass
class SoftPromptConfig(VirtualTokensConfig):
    """n free embeddings; see `VirtualTokensConfig` for the init options."""


@register_method("soft-prompt", SoftPromptConfig)
class SoftPrompt(nn.Module):
    # `softprompt methods` prints this: what it is, and when to pick it
    summary = (
        "the default: n learned vectors before the input; smallest file, any decoder or encoder"
    )
    # the lr `softprompt compare` trains it at unless told otherwise: PEFT's prompt
    # tuning examples use 3e-2 with AdamW (Lester et al. used 0.3 with Adafactor)
    recommended_lr = 3e-2

    def __init__(self, config: SoftPromptConfig, context: MethodContext) -> None:
        super().__init__()
        self.config = config
        self.embeddings = nn.Parameter(initial_embeddings(config, context))  # (n, d)

    def forward(self) -> Prompt:
        return Prompt(embeds=self.embeddings)  # (n, d)

    def flatten(self) -> None:
        """Already flat: the embeddings are what the model sees."""
        return None
