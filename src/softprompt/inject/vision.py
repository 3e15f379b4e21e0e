"""Visual prompts in a frozen ViT / DINOv2 / DeiT (VPT, Jia et al. 2022, arXiv:2203.12119).

* Shallow: n prompt tokens spliced in after [CLS] (and DeiT's distillation token) at
  the input; they run through every layer and are dropped at the end.
* Deep: a fresh set of n prompt tokens at every layer. In the paper's formulation each
  layer i gets [x, P_i, E] and the prompt positions of its output are thrown away. Those
  outputs are never used, so all a prompt does at layer i is contribute keys and values
  to the real tokens' attention. This module computes exactly that: k_proj/v_proj of
  norm1(P_i), prepended to the real tokens' keys and values. The prompt tokens' queries,
  attention rows, output projection and MLP (P/(N+P) of every layer) are never computed,
  and the prompt's keys/values are computed once per batch when all rows share it.

`reference_deep_states` is the literal insert-and-discard version through transformers'
own layer modules; tests and benchmarks/vpt_deep_kv.py hold the K/V version to it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from softprompt.backbones import Backbone
from softprompt.errors import ConfigError
from softprompt.inject.prompt import Prompt, RowPrompts


@dataclass
class VisionPrompt(Prompt):
    """A `Prompt` that may also carry VPT-deep tokens.

    `deep` has shape (L, P, n, d): n prompt tokens for each of the L layers, P == 1
    when every row shares them or P == B per row. Real tokens see them only as keys
    and values (see the module docstring)."""

    deep: torch.Tensor | None = None  # (L, P, n, d)


@dataclass(frozen=True)
class _LayerParts:
    """The sub-modules of one pre-norm ViT block, whatever the model family calls them."""

    norm1: nn.Module
    attention: nn.Module  # has q_proj, k_proj, v_proj, o_proj, num_attention_heads, head_dim
    scale1: nn.Module  # DINOv2's layer scale, identity for ViT/DeiT
    norm2: nn.Module
    mlp: nn.Module
    scale2: nn.Module


def _layer_parts(layer: nn.Module) -> _LayerParts:
    if hasattr(layer, "norm1"):  # DINOv2
        return _LayerParts(
            layer.norm1,
            layer.attention,
            layer.layer_scale1,
            layer.norm2,
            layer.mlp,
            layer.layer_scale2,
        )
    if hasattr(layer, "layernorm_before"):  # ViT, DeiT
        same = nn.Identity()
        return _LayerParts(
            layer.layernorm_before, layer.attention, same, layer.layernorm_after, layer.mlp, same
        )
    raise ConfigError(f"backbone: cannot place visual prompts in a {type(layer).__name__} layer")


def _layers(model: nn.Module) -> nn.ModuleList:
    encoder = getattr(model, "encoder", None)
    if encoder is not None and hasattr(encoder, "layer"):
        return encoder.layer
    return model.layers


def _rows(tokens: torch.Tensor, batch: int) -> torch.Tensor:
    """(P, n, ...) with P == 1 or P == batch -> (batch, n, ...)."""
    if tokens.shape[0] not in (1, batch):
        raise ValueError(f"prompt has {tokens.shape[0]} rows for a batch of {batch}")
    return tokens.expand(batch, *tokens.shape[1:])


class VisionInjector:
    """Runs a frozen vision transformer with shallow and/or deep visual prompts."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.model = backbone.model
        self.layers = _layers(self.model)
        self.parts = [_layer_parts(layer) for layer in self.layers]
        # tokens in front of the patches: [CLS], plus DeiT's distillation token
        self.front = 2 if hasattr(self.model.embeddings, "distillation_token") else 1
        params = inspect.signature(self.model.embeddings.forward).parameters
        self._interpolate = "interpolate_pos_encoding" in params

    def hidden_states(
        self,
        prompt: Prompt,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids mean nothing to a ViT; the image task calls `image_states`."""
        raise NotImplementedError("a vision backbone takes pixels: use image_states")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, F + N, d): front tokens and patches with positions added."""
        if self._interpolate:  # ViT/DeiT interpolate positions only when asked
            return self.model.embeddings(pixels, interpolate_pos_encoding=True)
        return self.model.embeddings(pixels)  # DINOv2 always interpolates

    def image_states(self, prompt: Prompt, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, F + N, d) final (layer-normed) states of the real tokens."""
        if isinstance(prompt, RowPrompts):
            if len(prompt.prompts) != 1:
                raise ConfigError(
                    "tasks: one batch of images takes one visual prompt for now; "
                    "score image tasks in separate batches"
                )
            prompt = prompt.prompts[0]
        deep = getattr(prompt, "deep", None)
        shallow = prompt.embeds
        x = self.embed(pixels)  # (B, F + N, d)
        batch, n = x.shape[0], 0 if shallow is None else shallow.shape[1]
        if n:
            x = torch.cat([x[:, : self.front], _rows(shallow, batch), x[:, self.front :]], 1)
        for i, layer in enumerate(self.layers):
            x = layer(x) if deep is None else self.prefixed_layer(i, x, deep[i])  # (B, T, d)
        x = self.model.layernorm(x)
        if n:
            x = torch.cat([x[:, : self.front], x[:, self.front + n :]], 1)  # (B, F + N, d)
        return x

    def prefixed_layer(self, index: int, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """One block where the real tokens x (B, T, d) also attend to `tokens` (P, n, d)."""
        parts = self.parts[index]
        attn = parts.attention
        batch, length, _ = x.shape
        heads, head_dim = attn.num_attention_heads, attn.head_dim
        h = parts.norm1(x)  # (B, T, d)
        p = parts.norm1(tokens)  # (P, n, d): computed once for a shared prompt

        def split(t: torch.Tensor) -> torch.Tensor:  # (R, T, H * hd) -> (R, H, T, hd)
            return t.view(t.shape[0], t.shape[1], heads, head_dim).transpose(1, 2)

        q = split(attn.q_proj(h))  # (B, H, T, hd)
        k = torch.cat([_rows(split(attn.k_proj(p)), batch), split(attn.k_proj(h))], 2)
        v = torch.cat([_rows(split(attn.v_proj(p)), batch), split(attn.v_proj(h))], 2)
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scaling)  # (B, H, T, hd)
        out = attn.o_proj(out.transpose(1, 2).reshape(batch, length, heads * head_dim))
        x = x + parts.scale1(out)  # (B, T, d)
        return x + parts.scale2(parts.mlp(parts.norm2(x)))


def reference_deep_states(
    injector: VisionInjector, deep: torch.Tensor, pixels: torch.Tensor
) -> torch.Tensor:
    """VPT-deep as the paper writes it: insert P_i before layer i, discard its outputs.

    Runs transformers' own layer modules on [front, P_i, patches]; slow on purpose
    (every layer computes n extra rows that are thrown away). (B, F + N, d)."""
    x = injector.embed(pixels)  # (B, F + N, d)
    front, n = injector.front, deep.shape[2]
    for i, layer in enumerate(injector.layers):
        tokens = _rows(deep[i], x.shape[0])  # (B, n, d)
        y = layer(torch.cat([x[:, :front], tokens, x[:, front:]], 1))  # (B, F + n + N, d)
        x = torch.cat([y[:, :front], y[:, front + n :]], 1)  # prompt outputs discarded
    return injector.model.layernorm(x)
