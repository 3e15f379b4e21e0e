"""Prompts for encoder-decoders (T5, BART), laid out as PEFT's SEQ_2_SEQ_LM adapters.

A soft prompt is n virtual tokens in front of the encoder's input, in front of
everything the tokenizer adds (BART's <s> included), with mask ones over them: what
`PeftModelForSeq2SeqLM.forward` does for PROMPT_TUNING (the decoder sees the prompt
only through cross-attention). A K/V prefix goes into the decoder's self-attention
cache, the decoder's mask gets ones over it and its tokens' positions start after it
(BART's learned positions, T5's relative buckets): PEFT's PREFIX_TUNING, which passes
the prefix as the cache of the whole model, so the encoder never sees it.

Rows are run in groups of one distinct prompt each (one group in the common case), so a
row's output equals the same row run alone whatever the other rows' prompts. The
encoder runs once per input row; the decoder may run several rows per input row
(`decoder_rows`: one per label word of a verbalizer).

Quirks at the head live here: T5 with a tied head scales the decoder's output by
d**-0.5 before the head, BART adds `final_logits_bias`; `_check` compares the whole
path against the model's own logits once per backbone and refuses what differs.
"""

from __future__ import annotations

import weakref

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from softprompt.backbones import Backbone
from softprompt.errors import BackboneError, ConfigError
from softprompt.inject.causal import cache_keyword
from softprompt.inject.head import (
    EmbeddingTable,
    LMHead,
    TextEnds,
    embedding_table,
    refuse_unless_reproduced,
    trailing_kv,
)
from softprompt.inject.prompt import Prompt, RowPrompts

# model_types whose tied head is fed the decoder's output times d**-0.5
_SCALED_TIED_HEAD = frozenset({"t5", "mt5", "umt5", "longt5", "switch_transformers"})
_CHECKED: weakref.WeakSet = weakref.WeakSet()


class Seq2SeqInjector(TextEnds):
    """Runs [virtual tokens] + tokens through the encoder, the decoder on its own ids
    after a K/V prefix, and the head on what the decoder gives."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        model = backbone.model
        self.config = model.config
        self.encoder = model.get_encoder()
        self.decoder = model.get_decoder()
        self.head = LMHead(backbone)
        bias = getattr(model, "final_logits_bias", None)  # BART: (1, V) after the head
        self.logit_bias = None if bias is None else bias[0]
        tied = getattr(self.config, "tie_word_embeddings", False)
        scaled = self.config.model_type in _SCALED_TIED_HEAD and tied
        self.scale = self.config.d_model**-0.5 if scaled else None
        start = getattr(self.config, "decoder_start_token_id", None)
        if start is None:
            raise BackboneError(
                f"{backbone.name}: the config has no decoder_start_token_id, so the decoder "
                "has no first token; set it in config.json (T5: the pad id, BART: </s>)"
            )
        self.start_id = int(start)
        self._cache_kw = cache_keyword(self.decoder)
        self._check()

    # -- the model's two ends (device, dtype, embed: TextEnds) -------------------
    def embedding_table(self) -> EmbeddingTable:
        return embedding_table(self.backbone)

    def logits(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(..., d) decoder states (as `decoder_states` gives them) -> float32 (..., V or W)."""
        logits = self.head(hidden, token_ids)
        if self.logit_bias is not None:
            bias = self.logit_bias if token_ids is None else self.logit_bias[token_ids]
            logits = logits + bias.float()
        return logits

    # -- encoder ---------------------------------------------------------------
    def _encode(
        self, prompt: Prompt, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(g, S) ids of rows sharing `prompt` -> encoder states (g, n + S, d), their mask
        (g, n + S) and n, the virtual tokens in front."""
        if prompt.inline is not None:
            raise ConfigError(
                "task.template: virtual-token slots are not supported on encoder-decoder "
                "backbones; the soft prompt goes in front of the encoder's input"
            )
        embeds = self.embed(input_ids)  # (g, S, d)
        mask = attention_mask
        n = prompt.n_embeds
        if n:
            front = prompt.embeds.to(embeds.dtype).expand(len(input_ids), -1, -1)  # (g, n, d)
            embeds = torch.cat([front, embeds], dim=1)  # (g, n + S, d)
            mask = torch.cat([mask.new_ones(len(input_ids), n), mask], dim=1)
        out = self.encoder(inputs_embeds=embeds.to(self.dtype), attention_mask=mask)
        return out.last_hidden_state, mask, n

    def hidden_states(
        self,
        prompts: Prompt | RowPrompts,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
        inline_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, S) encoder ids -> (B, S, d) float32 encoder states of those tokens."""
        if attention_mask.dim() != 2 or positions is not None or inline_index is not None:
            raise NotImplementedError("an encoder-decoder's encoder takes a (B, S) mask only")
        batch, width = input_ids.shape
        rows = RowPrompts.of(prompts, batch, self.device)
        out = torch.zeros(batch, width, self.backbone.spec.hidden_size, device=self.device)
        for prompt, members in self._groups(rows):
            states, _, n = self._encode(prompt, input_ids[members], attention_mask[members])
            out[members] = states[:, n:].float()
        return out  # (B, S, d)

    # -- decoder ---------------------------------------------------------------
    def _cache(self, prompt: Prompt, rows: int) -> EncoderDecoderCache | None:
        """The prompt's K/V prefix as the decoder's self-attention cache for `rows` rows."""
        if prompt.kv is None:
            return None
        own = DynamicCache()
        for layer, (keys, values) in enumerate(prompt.kv):  # (kvh, m, hd) each
            own.update(
                keys.to(self.dtype).expand(rows, -1, -1, -1),  # (r, kvh, m, hd)
                values.to(self.dtype).expand(rows, -1, -1, -1),
                layer,
            )
        return EncoderDecoderCache(own, DynamicCache())

    def _decode(
        self,
        cache: EncoderDecoderCache | None,
        ids: torch.Tensor,
        mask: torch.Tensor,
        encoded: torch.Tensor,
        encoded_mask: torch.Tensor,
    ) -> torch.Tensor:
        """The decoder on (r, T) ids after `cache` -> (r, T, d) float32, as the head takes it."""
        inputs = {
            "input_ids": ids,
            "attention_mask": mask,
            "encoder_hidden_states": encoded,
            "encoder_attention_mask": encoded_mask,
        }
        if cache is not None:
            inputs[self._cache_kw] = cache
            inputs["use_cache"] = True
        else:
            inputs["use_cache"] = False
        hidden = self.decoder(**inputs).last_hidden_state.float()  # (r, T, d)
        return hidden * self.scale if self.scale is not None else hidden

    def decoder_states(
        self,
        prompts: Prompt | RowPrompts,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_ids: torch.Tensor,
        decoder_mask: torch.Tensor,
        decoder_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher forcing: (B, S) encoder ids and (R, T) right-padded decoder ids (each
        starting from the decoder start token) -> (R, T, d) states for the head.

        `decoder_rows` (R,) names each decoder row's encoder row (default: row r of both)."""
        batch = input_ids.shape[0]
        rows = RowPrompts.of(prompts, batch, self.device)
        if decoder_rows is None:
            decoder_rows = torch.arange(batch, device=self.device)
        decoder_rows = decoder_rows.to(self.device)
        out = torch.zeros(*decoder_ids.shape, self.backbone.spec.hidden_size, device=self.device)
        local = torch.full((batch,), -1, dtype=torch.long, device=self.device)
        for prompt, members in self._groups(rows):
            encoded, encoded_mask, _ = self._encode(
                prompt, input_ids[members], attention_mask[members]
            )
            local[members] = torch.arange(len(members), device=self.device)
            picked = torch.nonzero(local[decoder_rows] >= 0).squeeze(1)  # (r,)
            which = local[decoder_rows[picked]]  # (r,) row of `encoded`
            mask = decoder_mask[picked]
            if prompt.n_kv:
                mask = torch.cat([mask.new_ones(len(picked), prompt.n_kv), mask], dim=1)
            out[picked] = self._decode(
                self._cache(prompt, len(picked)),
                decoder_ids[picked],
                mask,
                encoded[which],
                encoded_mask[which],
            )
            local[members] = -1
        return out  # (R, T, d)

    @torch.no_grad()
    def generate(
        self,
        prompts: Prompt | RowPrompts,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: list[int],
        stop_ids: tuple[int, ...] = (),
    ) -> list[list[int]]:
        """Greedy decoding from the decoder start token: per row the new ids, a stop id
        included when the row ends on one. The encoder runs once per row."""
        batch = input_ids.shape[0]
        rows = RowPrompts.of(prompts, batch, self.device)
        results: list[list[int]] = [[] for _ in range(batch)]
        for prompt, members in self._groups(rows):
            limits = [max_new_tokens[int(i)] for i in members]
            found = self._greedy(
                prompt, input_ids[members], attention_mask[members], limits, stop_ids
            )
            for i, tokens in zip(members.tolist(), found, strict=True):
                results[i] = tokens
        return results

    def _greedy(
        self,
        prompt: Prompt,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        limits: list[int],
        stop_ids: tuple[int, ...],
    ) -> list[list[int]]:
        """Rows of one prompt in lockstep; a finished row's later steps are dropped."""
        encoded, encoded_mask, _ = self._encode(prompt, input_ids, attention_mask)
        count = len(input_ids)
        cache = self._cache(prompt, count) or EncoderDecoderCache(DynamicCache(), DynamicCache())
        step_ids = torch.full((count, 1), self.start_id, device=self.device)  # (g, 1)
        tokens: list[list[int]] = [[] for _ in range(count)]
        done = [limit <= 0 for limit in limits]
        seen = prompt.n_kv
        for _ in range(max(limits, default=0)):
            if all(done):
                break
            seen += 1
            mask = torch.ones(count, seen, dtype=torch.long, device=self.device)  # (g, m + t)
            hidden = self._decode(cache, step_ids, mask, encoded, encoded_mask)  # (g, 1, d)
            step_ids = self.logits(hidden[:, -1]).argmax(-1, keepdim=True)  # (g, 1)
            for row, token in enumerate(step_ids[:, 0].tolist()):
                if done[row]:
                    continue
                tokens[row].append(token)
                done[row] = token in stop_ids or len(tokens[row]) >= limits[row]
        return tokens

    @staticmethod
    def _groups(rows: RowPrompts) -> list[tuple[Prompt, torch.Tensor]]:
        """Each distinct prompt some row uses, with those rows' indices."""
        index = rows.index
        return [
            (rows.prompts[k], torch.nonzero(index == k).squeeze(1))
            for k in sorted(set(index.tolist()))
        ]

    @torch.no_grad()
    def token_kv(self, embeds: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """The decoder's own self-attention K/V of (n, d) embeddings, run after the start
        token over an encoder that read the same embeddings: L x 2 x (h, n, hd)."""
        inputs = embeds.float().to(self.device).unsqueeze(0)  # (1, n, d)
        ones = torch.ones(1, inputs.shape[1], dtype=torch.long, device=self.device)
        encoded = self.encoder(inputs_embeds=inputs.to(self.dtype), attention_mask=ones)
        start = self.embed(torch.tensor([[self.start_id]], device=self.device))  # (1, 1, d)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        self.decoder(
            inputs_embeds=torch.cat([start, inputs], dim=1).to(self.dtype),
            encoder_hidden_states=encoded.last_hidden_state,
            encoder_attention_mask=ones,
            use_cache=True,
            **{self._cache_kw: cache},
        )
        return trailing_kv(cache.self_attention_cache.layers, embeds.shape[0])

    @torch.no_grad()
    def _check(self) -> None:
        """Once per backbone: encoder, decoder and head as run here equal the model's own
        logits; refuse the backbone otherwise (its scores would be wrong)."""
        if self.backbone.model in _CHECKED:
            return
        vocab = self.backbone.spec.vocab_size
        ids = (torch.arange(3, 8, device=self.device) % vocab).unsqueeze(0)  # (1, 5)
        decoder_ids = torch.tensor([[self.start_id, 4 % vocab, 5 % vocab]], device=self.device)
        reference = self.backbone.model(input_ids=ids, decoder_input_ids=decoder_ids).logits
        ones = torch.ones_like(ids)
        hidden = self.decoder_states(Prompt(), ids, ones, decoder_ids, torch.ones_like(decoder_ids))
        refuse_unless_reproduced(self.backbone, self.logits(hidden), reference, "encoder-decoder")
        _CHECKED.add(self.backbone.model)
