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

    `kv` is a per-layer key/value prefix (prefix tuning, causal decoders only):
    one `(keys, values)` pair per layer, each of shape (P, num_kv_heads, n, head_dim),
    that every real token attends to as if n tokens had been there before it. Keys
    are used as given (for RoPE models they count as already rotated).
    """

    embeds: torch.Tensor | None = None  # (P, n, d)
    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None  # L x 2 x (P, kvh, n, hd)

    @property
    def length(self) -> int:
        """Virtual tokens in front of the real ones (input-embedding and K/V ones together)."""
        embedded = 0 if self.embeds is None else self.embeds.shape[1]
        cached = 0 if self.kv is None else self.kv[0][0].shape[2]
        return embedded + cached

    @property
    def rows(self) -> int:
        if self.embeds is not None:
            return self.embeds.shape[0]
        return 1 if self.kv is None else self.kv[0][0].shape[0]


class Injector(Protocol):
    """Runs the frozen backbone with a prompt and returns real-token hidden states."""

    backbone: Backbone

    def hidden_states(
        self,
        prompt: Prompt,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) ids and mask -> (B, T, d) final hidden states at the real tokens.

        A (B, T, T) visibility mask with explicit `positions` is for causal decoders only."""
        ...


def make_injector(backbone: Backbone) -> Injector:
    """Pick the injector for the backbone's kind (decoder or encoder)."""
    from softprompt.inject.causal import CausalInjector
    from softprompt.inject.encoder import EncoderInjector
    from softprompt.inject.vision import VisionInjector

    if backbone.spec.kind == "vision":
        return VisionInjector(backbone)
    if backbone.spec.kind == "causal-lm":
        return CausalInjector(backbone)
    return EncoderInjector(backbone)
