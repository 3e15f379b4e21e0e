"""Prompts for bidirectional encoders: virtual tokens right after [CLS], deep prompts.

Every token of an encoder sees the prompt and the prompt sees every token, so nothing
can be shared across rows; each row's prompt is spliced into its input embeddings
(Lester et al. / P-tuning v1 placement after the first special token). Rows with
shorter prompts get masked slots after theirs, and positions skip those slots, so a
row's output equals the same row run alone. Deep prompts (P-tuning v2, Liu et al.
2022; prefix tuning on an encoder) are per-layer keys/values every token attends to,
passed as the attention cache: they take no positions and produce no outputs.

As for decoders, a backbone held in bf16/fp16 gets its inputs cast here and hands back
float32 hidden states; prompts and everything trained stay float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from softprompt.backbones import Backbone
from softprompt.errors import ConfigError
from softprompt.inject.head import TextEnds, trailing_kv
from softprompt.inject.prompt import Prompt, RowPrompts, attention_mask, row_embeddings


class EncoderInjector(TextEnds):
    """Runs an encoder as [CLS] + prompt + tokens [SEP]; returns real-token states."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.model = backbone.core()

    def logits(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        raise ConfigError(
            f"task.head: {self.backbone.name} is an encoder without an LM head; "
            "use task.head: linear"
        )

    def _virtual(self, rows: RowPrompts, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Each row's prompt, padded after it to the longest: (B, n, d) and its mask (B, n)."""
        n = max(p.n_embeds for p in rows.prompts)
        if n == 0:
            return None
        d = self.backbone.spec.hidden_size
        padded, valid = [], []
        for p in rows.prompts:
            embeds = p.embeds if p.embeds is not None else torch.zeros(0, d, device=self.device)
            padded.append(torch.cat([embeds, embeds.new_zeros(n - p.n_embeds, d)]))  # (n, d)
            valid.append(torch.arange(n, device=self.device) < p.n_embeds)  # (n,)
        index = rows.index.to(self.device)
        if len(padded) == 1:
            return padded[0].expand(batch, -1, -1), valid[0].long().expand(batch, -1)
        return torch.stack(padded)[index], torch.stack(valid).long()[index]  # (B, n, d), (B, n)

    def _kv_prefix(self, rows: RowPrompts, batch: int) -> tuple[DynamicCache, torch.Tensor] | None:
        """Deep prompts (P-tuning v2): each row's per-layer K/V, left-padded to the longest,
        as a cache every layer's attention reads first; and its mask (B, m)."""
        m = max(p.n_kv for p in rows.prompts)
        if m == 0:
            return None
        spec, index = self.backbone.spec, rows.index.to(self.device)
        shape = (spec.num_kv_heads, 0, spec.head_dim)
        cache = DynamicCache(config=self.backbone.model.config)
        for layer in range(spec.num_layers):
            parts = []
            for part in (0, 1):
                stacked = torch.stack(
                    [
                        F.pad(
                            p.kv[layer][part]
                            if p.kv is not None
                            else torch.zeros(shape, device=self.device),
                            (0, 0, m - p.n_kv, 0),
                        )
                        for p in rows.prompts
                    ]
                )  # (k, kvh, m, hd)
                parts.append(
                    stacked.expand(batch, -1, -1, -1) if len(rows.prompts) == 1 else stacked[index]
                )
            cache.update(parts[0].to(self.dtype), parts[1].to(self.dtype), layer)  # (B, kvh, m, hd)
        lengths = torch.tensor([p.n_kv for p in rows.prompts], device=self.device)[index]  # (B,)
        mask = (torch.arange(m, device=self.device)[None] >= m - lengths[:, None]).long()
        return cache, mask  # (B, m)

    def hidden_states(
        self,
        prompts: Prompt | RowPrompts,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
        inline_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) ids starting with [CLS] -> (B, T, d) states of those tokens."""
        if attention_mask.dim() != 2 or positions is not None:
            raise NotImplementedError("an encoder takes a (B, T) padding mask only")
        batch = input_ids.shape[0]
        rows = RowPrompts.of(prompts, batch, self.device)
        tokens = row_embeddings(rows, self.embed(input_ids), inline_index)  # (B, T, d)
        virtual = self._virtual(rows, batch)
        n = 0 if virtual is None else virtual[0].shape[1]
        if virtual is None:
            embeds, mask = tokens, attention_mask
        else:
            prompt, valid = virtual  # (B, n, d), (B, n)
            embeds = torch.cat([tokens[:, :1], prompt, tokens[:, 1:]], dim=1)  # (B, n + T, d)
            middle = valid.to(attention_mask.dtype)
            mask = torch.cat([attention_mask[:, :1], middle, attention_mask[:, 1:]], 1)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, n + T), masked slots skipped
        embeds = embeds.to(self.dtype)  # the boundary into the frozen encoder
        prefix = self._kv_prefix(rows, batch)
        if prefix is None:
            out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        else:
            cache, prefix_mask = prefix
            out = self.model(
                inputs_embeds=embeds,
                attention_mask=self._with_prefix(mask, prefix_mask),
                position_ids=positions,
                cache=cache,
            )
        hidden = out.last_hidden_state.float()  # (B, n + T, d)
        return torch.cat([hidden[:, :1], hidden[:, 1 + n :]], dim=1)  # (B, T, d)

    def _with_prefix(self, mask: torch.Tensor, prefix_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) token mask + (B, m) prefix mask -> (B, 1, L, m + L): what every query sees.

        Bool for SDPA (True = attend), an additive float mask for eager attention."""
        batch, length = mask.shape
        keys = torch.cat([prefix_mask, mask], 1).bool()  # (B, m + L)
        visible = keys[:, None, None, :].expand(batch, 1, length, keys.shape[1])
        dtype = self.backbone.input_embeddings().weight.dtype
        return attention_mask(visible, self.backbone.model.config, dtype)

    @torch.no_grad()
    def token_kv(self, embeds: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """The encoder's own per-layer K/V of (n, d) embeddings after [CLS]: L x 2 x (h, n, hd)."""
        inputs = self._after_token(embeds, self.backbone.spec.bos_token_id)  # [CLS] + n
        cache = DynamicCache(config=self.backbone.model.config)
        self.model(inputs_embeds=inputs.to(self.dtype), cache=cache)
        return trailing_kv(cache.layers, embeds.shape[0])
