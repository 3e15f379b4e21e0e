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

    def image_states(
        self, prompt: Prompt | RowPrompts, pixels: torch.Tensor, *, front_only: bool = False
    ) -> torch.Tensor:
        """(B, 3, S, S) -> (B, F + N, d) final (layer-normed) states of the real tokens.

        `prompt` may be one prompt or k distinct ones with a per-row index (RowPrompts);
        each row's states are those it gets run alone with its own prompt. Prompts of
        other lengths are padded and the padding masked out of every attention; with
        no padding no mask is built at all. `front_only`: only [CLS] (and DeiT's
        distillation token) are read, so the last layer computes only their rows
        (queries, output projection and MLP of the patches are skipped) -> (B, F, d)."""
        batch = pixels.shape[0]
        stack = _stack_prompts(RowPrompts.of(prompt, batch, pixels.device), batch)
        x = self.embed(pixels)  # (B, F + N, d)
        n = 0 if stack.shallow is None else stack.shallow.shape[1]
        if n:
            shallow = stack.rows(stack.shallow).to(x.dtype)  # (B, n, d)
            x = torch.cat([x[:, : self.front], shallow, x[:, self.front :]], 1)
        keep = stack.key_mask(self.front, x.shape[1] - self.front - n)  # (B, 1, 1, K) | None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            queries = self.front if front_only and i == last else None
            if stack.deep is None and keep is None and queries is None:
                x = layer(x)  # (B, T, d): transformers' own block
            else:
                tokens = None if stack.deep is None else stack.deep[i]
                x = self.prefixed_layer(i, x, tokens, stack, keep, queries)
        x = self.model.layernorm(x)
        if n and not front_only:
            x = torch.cat([x[:, : self.front], x[:, self.front + n :]], 1)  # (B, F + N, d)
        return x

    def prefixed_layer(
        self,
        index: int,
        x: torch.Tensor,
        tokens: torch.Tensor | None,
        stack: _PromptStack | None = None,
        keep: torch.Tensor | None = None,
        queries: int | None = None,
    ) -> torch.Tensor:
        """One block where the real tokens x (B, T, d) also attend to `tokens` (P, n, d),
        P == 1 (shared), P == B (per row) or P == k distinct prompts picked by `stack`.
        `keep` (B, 1, 1, n + T) masks padding out of the keys; `queries`: only the first
        rows of x are needed, so only they get queries, output projection and MLP."""
        parts = self.parts[index]
        attn = parts.attention
        batch = x.shape[0]
        heads, head_dim = attn.num_attention_heads, attn.head_dim
        h = parts.norm1(x)  # (B, T, d)

        def split(t: torch.Tensor) -> torch.Tensor:  # (R, T, H * hd) -> (R, H, T, hd)
            return t.view(t.shape[0], t.shape[1], heads, head_dim).transpose(1, 2)

        q = split(attn.q_proj(h if queries is None else h[:, :queries]))  # (B, H, Q, hd)
        k, v = split(attn.k_proj(h)), split(attn.v_proj(h))  # (B, H, T, hd)
        if tokens is not None:
            p = parts.norm1(tokens)  # (P, n, d): once per distinct prompt, not per row
            pk, pv = split(attn.k_proj(p)), split(attn.v_proj(p))  # (P, H, n, hd)
            if stack is not None and stack.index is not None:
                pk, pv = pk[stack.index], pv[stack.index]  # (B, H, n, hd)
            k = torch.cat([_rows(pk, batch), k], 2)  # (B, H, n + T, hd)
            v = torch.cat([_rows(pv, batch), v], 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=attn.scaling)
        length = out.shape[2]
        out = attn.o_proj(out.transpose(1, 2).reshape(batch, length, heads * head_dim))
        x = x if queries is None else x[:, :queries]  # (B, Q, d)
        x = x + parts.scale1(out)
        return x + parts.scale2(parts.mlp(parts.norm2(x)))


@dataclass
class _PromptStack:
    """The batch's distinct visual prompts, stacked once (not per row).

    shallow: (P, n, d) input tokens; deep: (L, P, m, d) per-layer tokens. P == 1 when
    every row shares one prompt (or P == B for a per-row tensor), else P == k distinct
    prompts and `index` (B,) picks each row's. Shorter prompts are zero-padded; the
    (k, n) / (k, m) `*_keep` masks say which entries are real (None: nothing padded)."""

    batch: int
    shallow: torch.Tensor | None = None
    deep: torch.Tensor | None = None
    shallow_keep: torch.Tensor | None = None
    deep_keep: torch.Tensor | None = None
    index: torch.Tensor | None = None  # (B,) when k > 1

    def rows(self, tokens: torch.Tensor) -> torch.Tensor:
        """(P, n, ...) -> (B, n, ...): a view when shared, a gather when mixed."""
        if self.index is not None:
            return tokens[self.index]
        return _rows(tokens, self.batch)

    def key_mask(self, front: int, patches: int) -> torch.Tensor | None:
        """(B, 1, 1, m + F + n + N) "may attend" over [deep prefix, front, shallow,
        patches], or None when nothing is padded (SDPA then runs without a mask)."""
        if self.shallow_keep is None and self.deep_keep is None:
            return None
        some = self.deep if self.deep is not None else self.shallow
        count, device = some.shape[-3], some.device

        def real(keep: torch.Tensor | None, length: int) -> torch.Tensor:
            if keep is None:
                return torch.ones(count, length, dtype=torch.bool, device=device)
            return keep.to(device)

        parts = [real(self.deep_keep, self.deep.shape[2])] if self.deep is not None else []
        parts.append(real(None, front))
        if self.shallow is not None:
            parts.append(real(self.shallow_keep, self.shallow.shape[1]))
        parts.append(real(None, patches))
        return self.rows(torch.cat(parts, 1))[:, None, None, :]  # (B, 1, 1, K)


def _padded(
    tensors: list[torch.Tensor | None], dim: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack along a new axis 0, zero-padding axis `dim` of each tensor (None: length 0)
    to the longest. Returns the (k, ...) stack and a (k, longest) keep mask, or None
    for the mask when every tensor had the longest length."""
    real = next(t for t in tensors if t is not None)
    lengths = [0 if t is None else t.shape[dim] for t in tensors]
    longest = max(lengths)
    rows = []
    for t, length in zip(tensors, lengths, strict=True):
        shape = list(real.shape)
        shape[dim] = longest - length
        pad = real.new_zeros(shape)
        rows.append(pad if t is None else torch.cat([t, pad], dim))
    stacked = torch.stack(rows)  # (k, ..., longest, ...)
    if min(lengths) == longest:
        return stacked, None
    keep = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]  # (k, longest)
    return stacked, keep.to(real.device)


def _stack_prompts(rows: RowPrompts, batch: int) -> _PromptStack:
    """One prompt (P == 1 or B) passes through as is; k > 1 prompts are stacked and padded."""
    if len(rows.prompts) == 1:
        prompt = rows.prompts[0]
        shallow = prompt.embeds
        if shallow is not None and shallow.dim() == 2:
            shallow = shallow.unsqueeze(0)  # (1, n, d)
        return _PromptStack(batch, shallow, getattr(prompt, "deep", None))
    shallows, deeps = [], []
    for j, prompt in enumerate(rows.prompts):
        embeds, deep = prompt.embeds, getattr(prompt, "deep", None)
        if embeds is not None and embeds.dim() == 3:
            if embeds.shape[0] != 1:
                raise ConfigError(f"prompts: prompt {j} of a mixed batch has per-row tokens")
            embeds = embeds[0]  # (n, d)
        if deep is not None:
            if deep.shape[1] != 1:
                raise ConfigError(f"prompts: prompt {j} of a mixed batch has per-row deep tokens")
            deep = deep[:, 0]  # (L, m, d)
        shallows.append(embeds)
        deeps.append(deep)
    stack = _PromptStack(batch, index=rows.index)
    if any(t is not None for t in shallows):
        stack.shallow, stack.shallow_keep = _padded(shallows, 0)  # (k, n, d)
    if any(t is not None for t in deeps):
        deep_stack, stack.deep_keep = _padded(deeps, 1)  # (k, L, m, d)
        stack.deep = deep_stack.transpose(0, 1)  # (L, k, m, d)
    device = stack.deep if stack.deep is not None else stack.shallow
    if device is not None:
        stack.index = rows.index.to(device.device)
    return stack


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
