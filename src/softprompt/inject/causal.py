"""Prompts for causal decoders, computed once and shared as a key/value prefix.

A prompt at the front of a causal decoder never sees the tokens after it, so its
hidden states (and so its per-layer keys and values) do not depend on the input.
PEFT runs the n virtual tokens through every layer for each of the B rows; here
they run once per distinct prompt (P rows, usually 1) and their keys/values are
broadcast to all B rows through the attention cache. Exact, and the same path
serves prefix tuning and cached prompts in a server later (see performance.md #1).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from softprompt.backbones import Backbone
from softprompt.inject.base import Prompt


class CausalInjector:
    """Runs a decoder as [BOS] + prompt + tokens, with the prefix computed once."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.core = backbone.core()
        self.embed = backbone.input_embeddings()
        self.config = backbone.model.config

    def prefix_embeds(self, prompt: Prompt) -> torch.Tensor | None:
        """[BOS] (if the tokenizer adds one) followed by the virtual tokens: (P, m, d)."""
        parts = []
        bos = self.backbone.spec.bos_token_id
        if bos is not None:
            bos_vec = self.embed.weight[bos].view(1, 1, -1)  # (1, 1, d)
            parts.append(bos_vec.expand(prompt.rows, 1, -1))
        if prompt.length:
            parts.append(prompt.embeds)
        return torch.cat(parts, dim=1) if parts else None  # (P, m, d)

    def prefix_cache(self, prompt: Prompt, batch_size: int) -> tuple[DynamicCache | None, int]:
        """Run the prefix once per distinct prompt; return a cache broadcast to B rows."""
        embeds = self.prefix_embeds(prompt)
        if embeds is None:
            return None, 0
        cache = DynamicCache(config=self.config)
        self.core(inputs_embeds=embeds, use_cache=True, past_key_values=cache)
        rows = embeds.shape[0]
        if rows == batch_size:
            return cache, embeds.shape[1]
        if rows != 1:
            raise ValueError(f"prompt has {rows} rows for a batch of {batch_size}")
        shared = DynamicCache(config=self.config)
        for index, layer in enumerate(cache.layers):
            keys = layer.keys.expand(batch_size, -1, -1, -1)  # (B, kvh, m, hd), a view
            values = layer.values.expand(batch_size, -1, -1, -1)
            shared.update(keys, values, index)
        return shared, embeds.shape[1]

    def hidden_states(
        self, prompt: Prompt, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, T) ids without BOS, mask with padding on either side -> (B, T, d)."""
        batch, _ = input_ids.shape
        cache, m = self.prefix_cache(prompt, batch)
        positions = m + (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        prefix_mask = attention_mask.new_ones(batch, m)
        full_mask = torch.cat([prefix_mask, attention_mask], dim=1)  # (B, m + T)
        out = self.core(
            inputs_embeds=self.embed(input_ids),  # (B, T, d)
            attention_mask=full_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state  # (B, T, d)

    def step(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
    ) -> torch.Tensor:
        """One incremental decoding step on an existing cache: (B, t) -> (B, t, d)."""
        out = self.core(
            inputs_embeds=self.embed(input_ids),
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        return out.last_hidden_state
