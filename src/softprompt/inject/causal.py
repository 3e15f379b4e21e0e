"""Prompts for causal decoders, computed once per distinct prompt and shared as a K/V prefix.

A prompt at the front of a causal decoder never sees the tokens after it, so its hidden
states (and so its per-layer keys and values) do not depend on the input. PEFT runs the
n virtual tokens through every layer for each of the B rows; here each of the k distinct
prompts of a batch runs once (prompts of one shape stacked into one call), and rows pick
theirs by index from the attention cache. Prompts of different lengths are left-padded
to the longest with masked slots, and each row's real tokens take positions right after
its own prompt, so every row's output equals the same row run alone (performance.md #1).

The frozen model may be held in bf16/fp16 (`--dtype`) while prompts stay float32: the
cast into the backbone happens here (`run_core` and where prompt K/V enter the cache),
and what comes out (`embed`, `hidden_states`, `logits`, `token_kv`) is float32.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from softprompt.backbones import Backbone
from softprompt.inject.head import (
    EmbeddingTable,
    LMHead,
    TextEnds,
    check_head,
    embedding_table,
    trailing_kv,
)
from softprompt.inject.prompt import Prompt, RowPrompts, attention_mask, row_embeddings


def cache_keyword(module: torch.nn.Module) -> str:
    """transformers 5.24 renamed `past_key_values` to `cache` (the old name goes in 5.40);
    use whichever the installed version's forward declares."""
    parameters = inspect.signature(module.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@dataclass
class PrefixCache:
    """Per-row prompt keys/values ready for the real tokens.

    `cache` holds (B, kvh, m, hd) per layer (None when no row has a prefix); `mask` (B, m)
    marks each row's own slots (its prompt is left-padded to the longest, m); `lengths`
    (B,) is each row's prompt length, where its real tokens' positions start."""

    cache: DynamicCache | None
    mask: torch.Tensor  # (B, m)
    lengths: torch.Tensor  # (B,)

    @property
    def width(self) -> int:
        return self.mask.shape[1]


class CausalInjector(TextEnds):
    """Runs a decoder as [K/V prefix] + [BOS] + [virtual tokens] + tokens, per row."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.core = backbone.core()
        self.config = backbone.model.config
        self.head = LMHead(backbone)
        self._cache_kw = cache_keyword(self.core)
        check_head(backbone, self.run_core)

    # -- the model's two ends (device, dtype, embed: TextEnds) -------------------
    def logits(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(hidden, token_ids)  # (..., V or W)

    def run_core(self, *, cache: DynamicCache | None = None, **inputs):
        """The transformer stack, with the cache passed under the installed version's name;
        `inputs_embeds` is cast to the model's dtype (the boundary into the backbone)."""
        embeds = inputs.get("inputs_embeds")
        if embeds is not None and embeds.dtype != self.dtype:
            inputs["inputs_embeds"] = embeds.to(self.dtype)
        if cache is not None:
            inputs[self._cache_kw] = cache
            inputs["use_cache"] = True
        return self.core(**inputs)

    # -- prompts -> cache ----------------------------------------------------
    def _run_group(self, prompts: list[Prompt]) -> tuple[list[tuple[torch.Tensor, ...]], int]:
        """Prompts of one signature stacked at batch G: per layer (G, kvh, m, hd), and m."""
        cache = DynamicCache(config=self.config)
        n_kv = prompts[0].n_kv
        if n_kv:
            for layer in range(len(prompts[0].kv)):
                keys = torch.stack([p.kv[layer][0] for p in prompts])  # (G, kvh, n_kv, hd)
                values = torch.stack([p.kv[layer][1] for p in prompts])
                cache.update(keys.to(self.dtype), values.to(self.dtype), layer)
        parts = []
        bos = self.backbone.spec.bos_token_id
        if bos is not None:
            bos_ids = torch.full((len(prompts), 1), bos, device=self.device)  # (G, 1)
            parts.append(self.embed(bos_ids))  # (G, 1, d)
        if prompts[0].n_embeds:
            parts.append(torch.stack([p.embeds for p in prompts]))  # (G, n, d)
        if parts:
            embeds = torch.cat(parts, dim=1)  # (G, e, d)
            positions = n_kv + torch.arange(embeds.shape[1], device=self.device)
            self.run_core(
                inputs_embeds=embeds,
                position_ids=positions.expand(len(prompts), -1),  # (G, e)
                cache=cache,
            )
        width = n_kv + (embeds.shape[1] if parts else 0)
        return [(layer.keys, layer.values) for layer in cache.layers] if width else [], width

    def prefix_cache(self, prompts: Prompt | RowPrompts, batch_size: int) -> PrefixCache:
        """Run each distinct prompt once; hand each row its prompt's keys/values."""
        rows = RowPrompts.of(prompts, batch_size, self.device)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, prompt in enumerate(rows.prompts):
            groups.setdefault(prompt.signature, []).append(i)
        runs = [
            (members, *self._run_group([rows.prompts[i] for i in members]))
            for members in groups.values()
        ]
        runs.sort(key=lambda run: -run[2])  # prompt-less rows (width 0) last: all-masked slots
        order = [i for members, _, _ in runs for i in members]
        widths = [width for members, _, width in runs for _ in members]
        m = max(widths)
        # distinct prompt i sits at row position[i] of the stacked groups
        position = torch.empty(len(order), dtype=torch.long, device=self.device)
        position[torch.tensor(order, device=self.device)] = torch.arange(
            len(order), device=self.device
        )
        pick = position[rows.index.to(self.device)]  # (B,)
        lengths = torch.tensor(widths, device=self.device)[pick]  # (B,)
        slots = torch.arange(m, device=self.device)
        mask = (slots[None, :] >= m - lengths[:, None]).long()  # (B, m)
        if m == 0:
            return PrefixCache(None, mask, lengths)
        stacked = [(kv, len(members)) for members, kv, _ in runs]
        cache = DynamicCache(config=self.config)
        for layer in range(self.backbone.spec.num_layers):
            keys, values = (
                self._rows(stacked, layer, part, m, pick, batch_size) for part in (0, 1)
            )
            cache.update(keys, values, layer)
        return PrefixCache(cache, mask, lengths)

    @staticmethod
    def _rows(stacked, layer: int, part: int, m: int, pick: torch.Tensor, batch: int):
        """One layer's keys (part 0) or values (part 1) for every row: (B, kvh, m, hd).

        Groups are left-padded to m; a single distinct prompt is broadcast as a view."""
        blocks = []
        for kv, count in stacked:
            if kv:
                tensor = kv[layer][part]  # (G, kvh, width, hd)
                blocks.append(F.pad(tensor, (0, 0, m - tensor.shape[2], 0)))
            else:  # rows without any prefix: zeros in all-masked slots
                blocks.append(blocks[0].new_zeros(count, *blocks[0].shape[1:]))
        if len(blocks) == 1 and blocks[0].shape[0] == 1:
            return blocks[0].expand(batch, -1, -1, -1)  # (B, kvh, m, hd), a view
        return torch.cat(blocks)[pick]  # (B, kvh, m, hd)

    # -- real tokens ----------------------------------------------------------
    def hidden_states(
        self,
        prompts: Prompt | RowPrompts,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
        inline_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) ids without BOS -> (B, T, d).

        `attention_mask` is a (B, T) padding mask (padding on either side), or a
        (B, T, T) matrix of which real token sees which, with `positions` (B, T)
        counted from the first real token (several continuations of one context
        in one row, see tasks/word_tree.py). Each row sees its own prompt only;
        `inline_index` (B, T) puts the row's prompt's inline vectors at template slots."""
        batch = input_ids.shape[0]
        rows = RowPrompts.of(prompts, batch, self.device)
        prefix = self.prefix_cache(rows, batch)
        start = prefix.lengths[:, None]  # (B, 1)
        if attention_mask.dim() == 3:
            full_mask = self._visibility_mask(attention_mask, prefix.mask)  # (B, 1, T, m + T)
            positions = start + positions  # (B, T)
        else:
            positions = start + (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
            full_mask = torch.cat([prefix.mask.to(attention_mask.dtype), attention_mask], 1)
        out = self.run_core(
            inputs_embeds=row_embeddings(rows, self.embed(input_ids), inline_index),  # (B, T, d)
            attention_mask=full_mask,
            position_ids=positions,
            cache=prefix.cache,
        )
        return out.last_hidden_state.float()  # (B, T, d)

    def _visibility_mask(self, sees: torch.Tensor, prefix_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, T) bool -> (B, 1, T, m + T), each row's own prompt slots visible to its tokens.

        Bool for SDPA (True = attend, what transformers itself builds for it), an
        additive float mask for eager attention, which adds the mask to the scores."""
        batch, length, _ = sees.shape
        own = prefix_mask.bool()[:, None, :].expand(batch, length, -1)  # (B, T, m)
        visible = torch.cat([own, sees.bool()], dim=-1).unsqueeze(1)  # (B, 1, T, m + T)
        return attention_mask(visible, self.config, self.head.weight.dtype)

    def step(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        rows: RowPrompts | None = None,
        inline_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One incremental decoding step on an existing cache: (B, t) -> (B, t, d)."""
        embeds = self.embed(input_ids)  # (B, t, d)
        if rows is not None:
            embeds = row_embeddings(rows, embeds, inline_index)
        out = self.run_core(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=positions,
            cache=cache,
        )
        return out.last_hidden_state.float()  # (B, t, d)

    @torch.no_grad()
    def token_kv(
        self, embeds: torch.Tensor, *, after_bos: bool = True
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """The frozen model's own per-layer K/V of (n, d) embeddings: L x 2 x (kvh, n, hd).

        Run after BOS (when the tokenizer adds one) so the tokens see what they see in
        ordinary text; BOS's own K/V are dropped (a prompt's BOS comes after its prefix).
        `after_bos=False` runs them at positions 0..n-1 before any token (where PEFT
        puts virtual tokens)."""
        bos = self.backbone.spec.bos_token_id if after_bos else None
        inputs = self._after_token(embeds, bos)  # (1, [1 +] n, d); run_core casts it
        cache = DynamicCache(config=self.config)
        self.run_core(inputs_embeds=inputs, cache=cache)
        return trailing_kv(cache.layers, embeds.shape[0])

    def embedding_table(self) -> EmbeddingTable:
        """The frozen (V, d) input embedding table as stored (for nearest-token projection
        and trigger-token gradients; `embed` is what the first layer is fed)."""
        return embedding_table(self.backbone)


def select_rows(cache: DynamicCache, index: torch.Tensor, config) -> DynamicCache:
    """A fresh cache whose row r is `cache`'s row index[r] (the parent is not mutated)."""
    fresh = DynamicCache(config=config)
    for layer_index, layer in enumerate(cache.layers):
        fresh.update(layer.keys[index], layer.values[index], layer_index)  # (R, kvh, m, hd)
    return fresh


def copy_rows(cache: DynamicCache, count: int, config) -> DynamicCache:
    """A fresh cache of `count` rows from one of `count` rows or of one (the parent is
    not mutated: what runs next appends to the copy)."""
    fresh = DynamicCache(config=config)
    for index, layer in enumerate(cache.layers):
        keys = broadcast_rows(layer.keys, count)  # (R, kvh, m, hd)
        values = broadcast_rows(layer.values, count)
        fresh.update(keys, values, index)
    return fresh


def broadcast_rows(t: torch.Tensor, count: int) -> torch.Tensor:
    """A tensor of `count` rows, or of one row, as `count` rows."""
    return t if t.shape[0] == count else t.expand(count, *t.shape[1:])
