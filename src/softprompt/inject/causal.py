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
        if prompt.kv is not None:
            cache, m = self.kv_prefix_cache(prompt)
            return self._broadcast(cache, prompt.rows, batch_size), m
        embeds = self.prefix_embeds(prompt)
        if embeds is None:
            return None, 0
        cache = DynamicCache(config=self.config)
        self.core(inputs_embeds=embeds, use_cache=True, past_key_values=cache)
        return self._broadcast(cache, embeds.shape[0], batch_size), embeds.shape[1]

    def kv_prefix_cache(self, prompt: Prompt) -> tuple[DynamicCache, int]:
        """A per-layer K/V prefix, then [BOS] run on top of it: a (P, kvh, m, hd) cache.

        BOS comes after the prefix, as in PEFT (whose input ids start with BOS after
        the virtual keys/values), so the real tokens still see the BOS they were
        trained with. Runs at batch P, once.
        """
        if prompt.embeds is not None:
            raise NotImplementedError("a prompt with both input embeddings and a K/V prefix")
        cache = DynamicCache(config=self.config)
        for index, (keys, values) in enumerate(prompt.kv):
            cache.update(keys, values, index)  # (P, kvh, n, hd)
        n = prompt.length
        bos = self.backbone.spec.bos_token_id
        if bos is None:
            return cache, n
        bos_vec = self.embed.weight[bos].view(1, 1, -1).expand(prompt.rows, 1, -1)  # (P, 1, d)
        position = torch.full((prompt.rows, 1), n, device=bos_vec.device)  # (P, 1)
        self.core(
            inputs_embeds=bos_vec, position_ids=position, use_cache=True, past_key_values=cache
        )
        return cache, n + 1

    def _broadcast(self, cache: DynamicCache, rows: int, batch_size: int) -> DynamicCache:
        """A cache of P == 1 rows -> the same keys/values seen by B rows."""
        if rows == batch_size:
            return cache
        if rows != 1:
            raise ValueError(f"prompt has {rows} rows for a batch of {batch_size}")
        shared = DynamicCache(config=self.config)
        for index, layer in enumerate(cache.layers):
            keys = layer.keys.expand(batch_size, -1, -1, -1)  # (B, kvh, m, hd), a view
            values = layer.values.expand(batch_size, -1, -1, -1)
            shared.update(keys, values, index)
        return shared

    def hidden_states(
        self,
        prompt: Prompt,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) ids without BOS -> (B, T, d).

        `attention_mask` is a (B, T) padding mask (padding on either side), or a
        (B, T, T) matrix of which real token sees which, with `positions` (B, T)
        counted from the first real token (several continuations of one context
        in one row, see tasks/word_tree.py). The prompt is visible to every token."""
        batch, _ = input_ids.shape
        cache, m = self.prefix_cache(prompt, batch)
        if attention_mask.dim() == 3:
            full_mask = self._visibility_mask(attention_mask, m)  # (B, 1, T, m + T)
            positions = m + positions  # (B, T)
        else:
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

    def _visibility_mask(self, sees: torch.Tensor, m: int) -> torch.Tensor:
        """(B, T, T) bool -> (B, 1, T, m + T) with the prefix visible to every token.

        Bool for SDPA (True = attend, what transformers itself builds for it), an
        additive float mask for eager attention, which adds the mask to the scores."""
        batch, length, _ = sees.shape
        visible = torch.cat([sees.new_ones(batch, length, m), sees], dim=-1)  # (B, T, m + T)
        visible = visible.unsqueeze(1)  # (B, 1, T, m + T)
        if self.config._attn_implementation == "sdpa":
            return visible
        dtype = self.embed.weight.dtype
        return torch.zeros(visible.shape, dtype=dtype).masked_fill_(
            ~visible, torch.finfo(dtype).min
        )

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
