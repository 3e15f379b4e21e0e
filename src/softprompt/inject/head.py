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
prompt's gradients are float32 whatever the frozen weights are held in.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from softprompt.backbones import Backbone
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
        self.weight = head.weight  # (V, d), frozen
        self.bias = getattr(head, "bias", None)  # (V,) or None
        self.multiply = getattr(config, "logit_scale", None)
        self.divide = getattr(config, "logits_scaling", None)
        self.softcap = getattr(config, "final_logit_softcapping", None)

    def __call__(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(..., d) -> float32 (..., W): computed in the head's dtype, as the model does."""
        weight = self.weight if token_ids is None else self.weight[token_ids]  # (W, d)
        bias = None
        if self.bias is not None:
            bias = self.bias if token_ids is None else self.bias[token_ids]  # (W,)
        hidden = hidden.to(weight.dtype)
        if token_ids is None:  # the whole vocabulary: packed weights inside `packed()`
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


def embed_tokens(backbone: Backbone, ids: torch.Tensor) -> torch.Tensor:
    """Ids -> what the model feeds its first layer from `inputs_embeds` (scaling included)."""
    return backbone.input_embeddings()(ids)


def embedding_table(backbone: Backbone) -> torch.Tensor:
    """The frozen (V, d) input embedding table as stored (no scaling): what nearest-token
    projection and trigger-token gradients read."""
    return backbone.input_embeddings().weight


@torch.no_grad()
def token_embeddings(backbone: Backbone, ids: torch.Tensor) -> torch.Tensor:
    """Embeddings of `ids` as the model feeds them to its first layer (scaling included,
    e.g. Gemma 3's sqrt(d)), float32 on the CPU: (..., d). For prompt init and export,
    which need the vectors without building an injector."""
    device = embedding_table(backbone).device
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
    gap = float((ours - reference).abs().max())
    # two roundings apart at most in a 16-bit dtype: its eps, not float32's 1e-3
    tolerance = max(1e-3, 8 * torch.finfo(backbone.dtype).eps)
    if gap > tolerance * (1.0 + float(reference.abs().max())):
        raise BackboneError(
            f"{backbone.name}: softprompt's path through this {backbone.spec.architecture} model "
            f"does not reproduce its own logits (max difference {gap:.3g}); scores would be "
            "wrong, so the backbone is refused. Please report the architecture."
        )
    _CHECKED.add(backbone.model)
