"""The two ends of the frozen model that prompt code reads directly: input embeddings
and the output projection, each exactly as the model's own forward applies them.

Model families differ at both ends. Gemma 3 scales its input embeddings by sqrt(d)
inside the embedding module (Gemma 2 inside the model), some heads carry a bias,
Cohere multiplies logits by `logit_scale`, Granite divides by `logits_scaling`, and
Gemma 2/3 squash them with `final_logit_softcapping`. Reading `embed_tokens.weight`
or multiplying by the head matrix by hand silently gets these wrong, so every lookup
and projection goes through here, and `check_head` compares against a plain forward
once per backbone and refuses what it cannot reproduce.

A backbone may be held in bf16/fp16 (`--dtype`): hidden states are cast to the head's
dtype on the way in and logits come back as float32, so losses, softmaxes and the
prompt's gradients are float32 whatever the frozen weights are held in. Under
`--quantize int8` both ends are per-row int8 (backbones/_precision.py `int8_ends`):
rows are read through `dequantized_rows` and whole-table products a block at a time,
so nothing here expands the whole table into floats.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from softprompt.backbones import Backbone, dequantized_blocks, dequantized_rows
from softprompt.errors import BackboneError
from softprompt.inject import fast_linear


def text_config(config):
    """The decoder's own config (multimodal configs nest it)."""
    return getattr(config, "text_config", None) or config


class LMHead:
    """(…, d) hidden states -> logits over the vocabulary or over chosen token ids."""

    def __init__(self, backbone: Backbone) -> None:
        head = backbone.model.get_output_embeddings()
        if head is None:
            raise BackboneError(
                f"{backbone.name}: this backbone has no LM head to score words with"
            )
        config = text_config(backbone.model.config)
        self.module = head  # runs a quantized head a block of rows at a time
        self.weight = head.weight  # (V, d), frozen; per-row int8 under --quantize int8
        self.bias = getattr(head, "bias", None)  # (V,) or None
        self.multiply = getattr(config, "logit_scale", None)
        self.divide = getattr(config, "logits_scaling", None)
        self.softcap = getattr(config, "final_logit_softcapping", None)

    def __call__(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(..., d) -> float32 (..., W): computed in the head's dtype, as the model does."""
        weight = self.weight if token_ids is None else self.rows(token_ids)  # (W, d)
        bias = None
        if self.bias is not None:
            bias = self.bias if token_ids is None else self.bias[token_ids]  # (W,)
        hidden = hidden.to(weight.dtype)
        if token_ids is None and weight is self.module.weight and _quantized(weight):
            logits = self.module(hidden).float()  # (..., V), the model's own int8 head
        elif token_ids is None:  # the whole vocabulary: packed weights inside `packed()`
            logits = fast_linear.linear(hidden, weight, bias).float()  # (..., V)
        else:
            logits = F.linear(hidden, weight, bias).float()  # (..., W)
        if self.multiply is not None:
            logits = logits * self.multiply
        if self.divide is not None:
            logits = logits / self.divide
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def rows(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The head's rows for `token_ids` in its dtype (int8 expanded for those rows only)."""
        return dequantized_rows(self.weight, token_ids.to(self.weight.device))  # (W, d)


def _quantized(weight: torch.Tensor) -> bool:
    """A torchao-quantized weight (a tensor subclass, not a plain Parameter)."""
    return hasattr(weight, "qdata")


def embed_tokens(backbone: Backbone, ids: torch.Tensor) -> torch.Tensor:
    """Ids -> what the model feeds its first layer from `inputs_embeds` (scaling included)."""
    return backbone.input_embeddings()(ids)


class EmbeddingTable:
    """The frozen (V, d) input embedding table as stored (no scaling, unlike
    `embed_tokens`), for code that reads it as a matrix: nearest-token projection, trigger
    gradients, init. The one way to it outside inject/: under `--quantize int8` the table
    is per-row int8, so rows come out expanded one request at a time and whole-table
    products run a block of rows at a time; nothing holds a float copy of the table."""

    def __init__(self, backbone: Backbone) -> None:
        self.weight = backbone.input_embeddings().weight  # (V, d), frozen

    @property
    def device(self) -> torch.device:
        return self.weight.device

    @property
    def shape(self) -> torch.Size:
        return self.weight.shape  # (V, d)

    def rows(self, ids: torch.Tensor | list[int]) -> torch.Tensor:
        """float32 (..., d) rows for ids (...), on the table's device."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return dequantized_rows(self.weight, ids).float()

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, float32 (n, d) rows start:start+n), covering the table in order."""
        for start, block in dequantized_blocks(self.weight):
            yield start, block.float()

    def scores(self, vectors: torch.Tensor) -> torch.Tensor:
        """(..., d) -> float32 (..., V): each vector's dot product with every row (a
        HotFlip/AutoPrompt gradient against the vocabulary), block by block."""
        flat = vectors.detach().float().reshape(-1, self.shape[1])  # (N, d)
        out = torch.empty(flat.shape[0], self.shape[0], device=flat.device)  # (N, V)
        for start, block in self.blocks():
            out[:, start : start + block.shape[0]] = flat @ block.to(flat.device).T
        return out.reshape(*vectors.shape[:-1], self.shape[0])


def embedding_table(backbone: Backbone) -> EmbeddingTable:
    """The backbone's input embedding table, read through `EmbeddingTable`."""
    return EmbeddingTable(backbone)


class TextEnds:
    """`device`, `dtype`, `embed` and a token's K/V as every text injector (decoder,
    encoder, encoder-decoder) reads them off its backbone. One definition, so the injector
    kinds cannot drift apart on where ids go, what prompts are cast to on the way in, or
    what K/V `token_kv` hands back (float32 whatever the frozen weights are held in)."""

    backbone: Backbone

    @property
    def device(self) -> torch.device:
        """Where prompts and ids go: the input embeddings' device (`--device-map` may hold
        the layers elsewhere)."""
        return self.backbone.input_device

    @property
    def dtype(self) -> torch.dtype:
        """What the frozen model computes in; prompts are cast to it on the way in."""
        return self.backbone.dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return embed_tokens(self.backbone, ids).float()  # (..., d) float32, the prompt side

    def _after_token(self, embeds: torch.Tensor, token_id: int | None) -> torch.Tensor:
        """(n, d) embeddings as one float32 row behind the token `token_id` (none when
        None): (1, 1 + n, d), what `token_kv` runs so the vectors see what they see in
        ordinary text after [CLS] / BOS."""
        inputs = embeds.float().to(self.device).unsqueeze(0)  # (1, n, d)
        if token_id is None:
            return inputs
        front = self.embed(torch.tensor([[token_id]], device=self.device))  # (1, 1, d)
        return torch.cat([front, inputs], dim=1)  # (1, 1 + n, d)


def trailing_kv(layers: Iterable[Any], n: int) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Row 0's keys and values at the last `n` positions of each cache layer, float32:
    L x 2 x (kvh, n, hd). What every `token_kv` keeps after running (front token +) n
    embeddings through the model: the front token's own K/V are dropped."""
    return tuple(
        (layer.keys[0, :, -n:].float(), layer.values[0, :, -n:].float()) for layer in layers
    )


@torch.no_grad()
def token_embeddings(backbone: Backbone, ids: torch.Tensor) -> torch.Tensor:
    """Embeddings of `ids` as the model feeds them to its first layer (scaling included,
    e.g. Gemma 3's sqrt(d)), float32 on the CPU: (..., d). For prompt init and export,
    which need the vectors without building an injector."""
    device = backbone.input_embeddings().weight.device
    return embed_tokens(backbone, ids.to(device)).detach().float().cpu()


_CHECKED: weakref.WeakSet = weakref.WeakSet()


@torch.no_grad()
def check_head(backbone: Backbone, call_core) -> None:
    """Once per backbone: our embed -> core -> LMHead path must equal `model(ids).logits`."""
    if backbone.model in _CHECKED:
        return
    device = backbone.input_device
    ids = torch.arange(1, 6, device=device).unsqueeze(0) % backbone.spec.vocab_size  # (1, 5)
    reference = backbone.model(input_ids=ids).logits.float()  # (1, 5, V)
    hidden = call_core(inputs_embeds=embed_tokens(backbone, ids)).last_hidden_state
    ours = LMHead(backbone)(hidden).float()
    refuse_unless_reproduced(backbone, ours, reference, "model")
    _CHECKED.add(backbone.model)


def refuse_unless_reproduced(
    backbone: Backbone, ours: torch.Tensor, reference: torch.Tensor, kind: str
) -> None:
    """Refuse `backbone` when the logits our path gives (`ours`) differ from its own
    forward's (`reference`) by more than rounding: every score would be wrong. One
    tolerance for every injector's once-per-backbone check (decoders, encoder-decoders)."""
    gap = float((ours.float() - reference.float()).abs().max())
    # two roundings apart at most in a 16-bit dtype: its eps, not float32's 1e-3
    tolerance = max(1e-3, 8 * torch.finfo(backbone.dtype).eps)
    if gap > tolerance * (1.0 + float(reference.float().abs().max())):
        raise BackboneError(
            f"{backbone.name}: softprompt's path through this {backbone.spec.architecture} {kind} "
            f"does not reproduce its own logits (max difference {gap:.3g}); scores would be "
            "wrong, so the backbone is refused. Please report the architecture."
        )
