"""What a prompt method hands to the frozen model, and the injector protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from softprompt.backbones import Backbone


@dataclass
class Prompt:
    """Virtual tokens produced by a method for one batch.

    `embeds` has shape (P, n, d) with P == 1 when every row shares the prompt
    (the common case, which lets a causal decoder compute the prompt once) or
    P == B when rows carry different prompts (multitask, ensembles, serving).
    `embeds=None` (or n == 0) means no virtual tokens: zero-shot or head-only.
    """

    embeds: torch.Tensor | None = None  # (P, n, d)

    @property
    def length(self) -> int:
        return 0 if self.embeds is None else self.embeds.shape[1]

    @property
    def rows(self) -> int:
        return 1 if self.embeds is None else self.embeds.shape[0]


class Injector(Protocol):
    """Runs the frozen backbone with a prompt and returns real-token hidden states."""

    backbone: Backbone

    def hidden_states(
        self, prompt: Prompt, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, T) ids and mask -> (B, T, d) final hidden states at the real tokens."""
        ...


def make_injector(backbone: Backbone) -> Injector:
    """Pick the injector for the backbone's kind (decoder or encoder)."""
    from softprompt.inject.causal import CausalInjector
    from softprompt.inject.encoder import EncoderInjector

    if backbone.spec.kind == "causal-lm":
        return CausalInjector(backbone)
    return EncoderInjector(backbone)
