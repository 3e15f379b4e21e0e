"""What a prompt method hands to the frozen model, and which row of a batch uses which.

A `Prompt` is one distinct prompt: virtual input embeddings, a per-layer key/value
prefix, or both. A batch may mix prompts: `RowPrompts` holds the k distinct prompts
of a batch (each computed once) and, for every row, the index of its prompt. One
prompt shared by every row is the common case and the fast one (k == 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from softprompt.backbones import Backbone
from softprompt.inject.head import EmbeddingTable

KV = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # L x (keys, values), each (kvh, n, hd)


@dataclass
class Prompt:
    """One prompt, as the frozen model sees it.

    `embeds` (n, d): virtual tokens placed after BOS (decoders) or after [CLS] (encoders).
    `inline` (n_inline, d): virtual tokens placed inside each row, where the batch's
    `inline_index` (B, T) names vector j (-1 for a real token): P-tuning's template slots.
    `kv`: one (keys, values) pair per layer, each (kv_heads, n_kv, head_dim), that every
    later token attends to as if n_kv tokens had come first (prefix tuning). Keys count
    as already rotated for RoPE models. On a decoder the order is K/V prefix, BOS, embeds,
    as in PEFT (whose input ids start with BOS after the virtual keys/values).
    """

    embeds: torch.Tensor | None = None  # (n, d)
    kv: KV | None = None  # L x 2 x (kvh, n_kv, hd)
    inline: torch.Tensor | None = None  # (n_inline, d): vectors for slots inside the rows

    @property
    def n_embeds(self) -> int:
        return 0 if self.embeds is None else self.embeds.shape[0]

    @property
    def n_kv(self) -> int:
        return 0 if self.kv is None else self.kv[0][0].shape[1]

    @property
    def length(self) -> int:
        """Virtual tokens in front of the real ones (K/V and embedded ones together)."""
        return self.n_embeds + self.n_kv

    @property
    def signature(self) -> tuple[int, int]:
        """Prompts with one signature can run through the model stacked in one batch."""
        return (self.n_kv, self.n_embeds)


@dataclass
class RowPrompts:
    """k distinct prompts and, per row, which one it uses: `index` (B,) in [0, k)."""

    prompts: list[Prompt]
    index: torch.Tensor  # (B,) long

    @classmethod
    def shared(cls, prompt: Prompt, batch_size: int, device: torch.device | None = None):
        """Every row uses `prompt`."""
        return cls([prompt], torch.zeros(batch_size, dtype=torch.long, device=device))

    @classmethod
    def of(cls, prompt: Prompt | RowPrompts, batch_size: int, device=None) -> RowPrompts:
        """Accept a single prompt wherever per-row prompts are expected."""
        if isinstance(prompt, RowPrompts):
            return prompt
        return cls.shared(prompt, batch_size, device)

    @classmethod
    def per_row(cls, prompts: Sequence[Prompt], choice: Sequence[int], device=None):
        return cls(list(prompts), torch.tensor(list(choice), dtype=torch.long, device=device))

    @property
    def rows(self) -> int:
        return self.index.shape[0]


def attention_mask(visible: torch.Tensor, config, dtype: torch.dtype) -> torch.Tensor:
    """A (B, 1, Q, K) bool "may attend" matrix as the model's attention wants it: bool for
    SDPA (what transformers itself builds for it), additive float for eager attention."""
    if config._attn_implementation == "sdpa":
        return visible
    zeros = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return zeros.masked_fill_(~visible, torch.finfo(dtype).min)


def row_embeddings(
    rows: RowPrompts, embeds: torch.Tensor, inline_index: torch.Tensor | None
) -> torch.Tensor:
    """(B, T, d) token embeddings with each row's inline slots set to its prompt's vectors."""
    if inline_index is None:
        return embeds
    d, device = embeds.shape[-1], embeds.device
    width = max(1, max(p.inline.shape[0] if p.inline is not None else 0 for p in rows.prompts))
    table = torch.stack(
        [
            torch.cat([p.inline, p.inline.new_zeros(width - p.inline.shape[0], d)])
            if p.inline is not None
            else embeds.new_zeros(width, d)
            for p in rows.prompts
        ]
    )  # (k, n_inline, d)
    index = inline_index.to(device)
    gathered = table[rows.index.to(device)[:, None], index.clamp(min=0)]  # (B, T, d)
    return torch.where((index >= 0)[..., None], gathered.to(embeds.dtype), embeds)


class Injector(Protocol):
    """Runs the frozen backbone with per-row prompts; the only code touching its weights.

    What every injector (decoder, encoder, image) offers; `TextInjector`,
    `DecoderInjector` and `ImageInjector` add what only those kinds have. Code outside
    `inject/` uses these members and nothing else of an injector (tests/core/test_inject_door.py)."""

    backbone: Backbone

    @property
    def device(self) -> torch.device:
        """Where prompts and ids go (`--device-map` may hold the layers elsewhere)."""
        ...

    def hidden_states(
        self,
        prompts: Prompt | RowPrompts,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
        inline_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) ids and mask -> (B, T, d) final hidden states at the real tokens.

        A (B, T, T) visibility mask with explicit `positions` is for causal decoders only."""
        ...

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (pixels for an image model) -> what the model feeds its first layer."""
        ...


class TextInjector(Injector, Protocol):
    """A text model's injector (decoder or encoder)."""

    def logits(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(..., d) final hidden states -> (..., V) logits, or only the `token_ids` columns."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """What the frozen model computes in; prompts are cast to it on the way in."""
        ...

    def token_kv(self, embeds: torch.Tensor) -> KV:
        """The frozen model's own per-layer K/V of (n, d) embeddings: L x 2 x (kvh, n, hd)."""
        ...


class DecoderInjector(TextInjector, Protocol):
    """A causal decoder's injector: what decoding, packing and the search scorer run on."""

    config: Any  # the model's config: cache layout and attention implementation

    def prefix_cache(self, prompts: Prompt | RowPrompts, batch_size: int) -> Any:
        """Each row's prompt K/V, mask and length (a `causal.PrefixCache`)."""
        ...

    def step(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        rows: RowPrompts | None = None,
        inline_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One incremental decoding step on an existing cache: (B, t) -> (B, t, d)."""
        ...

    def run_core(self, *, cache: Any = None, **inputs: Any) -> Any:
        """The transformer stack on `inputs_embeds` (cast to the model's dtype), with a cache."""
        ...

    def embedding_table(self) -> EmbeddingTable:
        """The frozen (V, d) input embedding table as stored, read through its accessor."""
        ...


class EncoderDecoderInjector(TextInjector, Protocol):
    """An encoder-decoder's injector (T5, BART): the decoder scores and generates."""

    def decoder_states(
        self,
        prompts: Prompt | RowPrompts,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_ids: torch.Tensor,
        decoder_mask: torch.Tensor,
        decoder_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, S) encoder ids, (R, T) decoder ids -> (R, T, d) states for `logits`."""
        ...

    def generate(
        self,
        prompts: Prompt | RowPrompts,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: list[int],
        stop_ids: tuple[int, ...] = (),
    ) -> list[list[int]]:
        """Greedy decoding: per row the new ids, a stop id included where it ended on one."""
        ...


class ImageInjector(Injector, Protocol):
    """A vision transformer's injector (visual prompts)."""

    front: int  # tokens in front of the patches ([CLS], DeiT's distillation token)

    def image_states(
        self, prompt: Prompt | RowPrompts, pixels: torch.Tensor, *, front_only: bool = False
    ) -> torch.Tensor:
        """(B, 3, S, S) -> (B, F + N, d) final states of the real tokens."""
        ...
