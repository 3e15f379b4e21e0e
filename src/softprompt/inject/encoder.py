"""Prompts for bidirectional encoders: virtual tokens right after [CLS].

Every token of an encoder sees the prompt and the prompt sees every token, so nothing
can be shared across rows; each row's prompt is spliced into its input embeddings
(Lester et al. / P-tuning v1 placement after the first special token). Rows with
shorter prompts get masked slots after theirs, and positions skip those slots, so a
row's output equals the same row run alone.
"""

from __future__ import annotations

import torch

from softprompt.backbones import Backbone
from softprompt.errors import ConfigError
from softprompt.inject.head import embed_tokens
from softprompt.inject.prompt import Prompt, RowPrompts, row_embeddings


class EncoderInjector:
    """Runs an encoder as [CLS] + prompt + tokens [SEP]; returns real-token states."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.model = backbone.core()

    @property
    def device(self) -> torch.device:
        return self.backbone.input_embeddings().weight.device

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return embed_tokens(self.backbone, ids)  # (..., d)

    def logits(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        raise ConfigError(
            f"task.head: {self.backbone.name} is an encoder without an LM head; "
            "use task.head: linear"
        )

    def _virtual(self, rows: RowPrompts, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Each row's prompt, padded after it to the longest: (B, n, d) and its mask (B, n)."""
        if any(p.kv is not None for p in rows.prompts):
            raise ConfigError(
                f"method.name: a key/value prefix needs a causal LM for now; {self.backbone.name} "
                "is an encoder. Use soft-prompt or p-tuning on encoders."
            )
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
        if virtual is None:
            return self.model(inputs_embeds=tokens, attention_mask=attention_mask).last_hidden_state
        embeds, valid = virtual  # (B, n, d), (B, n)
        n = embeds.shape[1]
        embeds = torch.cat([tokens[:, :1], embeds, tokens[:, 1:]], dim=1)  # (B, n + T, d)
        mask = torch.cat(
            [attention_mask[:, :1], valid.to(attention_mask.dtype), attention_mask[:, 1:]], 1
        )
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, n + T), masked slots skipped
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        hidden = out.last_hidden_state  # (B, n + T, d)
        return torch.cat([hidden[:, :1], hidden[:, 1 + n :]], dim=1)  # (B, T, d)
