"""The only code that touches the frozen model.

A method produces a `Prompt`; a batch's rows pick theirs through `RowPrompts`; an
injector turns them plus token ids into hidden states of the real tokens, and turns
hidden states into logits. Architecture quirks (BOS handling, embedding scaling,
logit soft-capping, where an encoder keeps its [CLS], how a decoder caches
keys/values) live here and in `softprompt.backbones`, nowhere else.
"""

from softprompt.backbones import Backbone
from softprompt.inject.causal import CausalInjector, PrefixCache
from softprompt.inject.encoder import EncoderInjector
from softprompt.inject.head import EmbeddingTable, embedding_table, token_embeddings
from softprompt.inject.prompt import (
    KV,
    DecoderInjector,
    EncoderDecoderInjector,
    ImageInjector,
    Injector,
    Prompt,
    RowPrompts,
    TextInjector,
)
from softprompt.inject.seq2seq import Seq2SeqInjector


def make_injector(backbone: Backbone) -> Injector:
    """Pick the injector for the backbone's kind (decoder, encoder, encoder-decoder)."""
    if backbone.spec.kind == "vision":
        from softprompt.inject.vision import VisionInjector  # images: shallow/deep VPT

        return VisionInjector(backbone)
    if backbone.spec.kind == "causal-lm":
        return CausalInjector(backbone)
    if backbone.spec.kind == "seq2seq-lm":
        return Seq2SeqInjector(backbone)
    return EncoderInjector(backbone)


__all__ = [
    "KV",
    "CausalInjector",
    "DecoderInjector",
    "EncoderDecoderInjector",
    "EncoderInjector",
    "ImageInjector",
    "Injector",
    "PrefixCache",
    "Prompt",
    "RowPrompts",
    "Seq2SeqInjector",
    "TextInjector",
    "EmbeddingTable",
    "embedding_table",
    "make_injector",
    "token_embeddings",
]
