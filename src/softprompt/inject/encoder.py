"""Prompts for bidirectional encoders: virtual tokens right after [CLS].

Every token of an encoder sees the prompt and the prompt sees every token, so
nothing can be shared across rows; the prompt is spliced into the input
embeddings (Lester et al. / P-tuning v1 placement after the first special token).
"""

from __future__ import annotations

import torch

from softprompt.backbones import Backbone
from softprompt.inject.base import Prompt


class EncoderInjector:
    """Runs an encoder as [CLS] + prompt + tokens [SEP]; returns real-token states."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.model = backbone.core()
        self.embed = backbone.input_embeddings()

    def hidden_states(
        self,
        prompt: Prompt,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) ids starting with [CLS] -> (B, T, d) states of those tokens."""
        if attention_mask.dim() != 2 or positions is not None:
            raise NotImplementedError("an encoder takes a (B, T) padding mask only")
        batch, _ = input_ids.shape
        tokens = self.embed(input_ids)  # (B, T, d)
        n = prompt.length
        if n == 0:
            out = self.model(inputs_embeds=tokens, attention_mask=attention_mask)
            return out.last_hidden_state
        virtual = prompt.embeds.expand(batch, -1, -1)  # (B, n, d)
        embeds = torch.cat([tokens[:, :1], virtual, tokens[:, 1:]], dim=1)  # (B, n + T, d)
        mask = torch.cat(
            [attention_mask[:, :1], attention_mask.new_ones(batch, n), attention_mask[:, 1:]], 1
        )
        positions = torch.arange(embeds.shape[1], device=embeds.device).expand(batch, -1)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        hidden = out.last_hidden_state  # (B, n + T, d)
        return torch.cat([hidden[:, :1], hidden[:, 1 + n :]], dim=1)  # (B, T, d)
