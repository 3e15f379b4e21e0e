"""Activation checkpointing of the frozen backbone's layers, with the prompt's cache kept.

Checkpointing keeps only each layer's input in the forward pass and runs the layer a
second time in the backward pass to get what its gradient needs: less memory for more
compute. transformers' own switch (`gradient_checkpointing_enable`, in 5.x an alias of
`activation_checkpointing_enable`) does not fit prompt learning:

- it acts only in training mode, and a frozen backbone stays in eval mode so that its
  dropout stays off;
- a checkpointed layer drops any cache passed to it (`GradientCheckpointingLayer` sets
  `cache=None` and logs a warning; GPT-2's model does it before calling its blocks),
  because a layer writes its new keys/values into the cache and the backward replay
  would write them a second time. A prefix passed as a cache, which is how every
  prompt reaches a causal decoder here (inject/causal.py), would silently vanish. PEFT
  refuses prefix tuning with checkpointing for the same reason (PEFT #869).

So softprompt checkpoints the layers itself: each layer's forward runs under
`torch.utils.checkpoint` (non-reentrant: the frozen layer's inputs need no gradient,
and the prompt's keys/values come from the cache, not from an argument, which only the
non-reentrant variant differentiates through), and just before the replay the caches
passed to the layer are put back to what they held when the layer first ran. The replay
then reads the same prefix and writes the same keys/values, so gradients equal those
of the plain forward (tests/core/test_gradient_checkpointing.py) while the per-layer
activations are freed. Evaluation (no gradients) runs the layers as they are.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer

from softprompt.backbones import Backbone
from softprompt.errors import ConfigError

_ACTIVE = "_softprompt_checkpointing"
_WRAPPED = "_softprompt_checkpoint_wrapped"


def checkpointable_layers(backbone: Backbone) -> list[nn.Module]:
    """The repeated blocks transformers itself would checkpoint (decoder/encoder layers)."""
    return [m for m in backbone.model.modules() if isinstance(m, GradientCheckpointingLayer)]


def _cache_states(caches: list[Cache]) -> list[list[dict]]:
    """What each cache layer holds now (tensors by reference: `update` replaces, never
    writes in place, so a shallow copy of the attributes is enough to go back to it)."""
    return [[dict(vars(layer)) for layer in cache.layers] for cache in caches]


def _restore(caches: list[Cache], states: list[list[dict]]) -> None:
    for cache, layers in zip(caches, states, strict=True):
        del cache.layers[len(layers) :]  # layers a cache without a config appended since
        for layer, state in zip(cache.layers, layers, strict=True):
            vars(layer).clear()
            vars(layer).update(state)


def _unwrapped_forward(layer: nn.Module):
    """The layer's own forward, inside Accelerate's hook when `--device-map` dispatched it
    (the hook brings offloaded weights in before each run, the replay included)."""
    forward = type(layer).forward.__get__(layer)
    hook = getattr(layer, "_hf_hook", None)
    if hook is None:
        return forward

    def hooked(*args, **kwargs):
        args, kwargs = hook.pre_forward(layer, *args, **kwargs)
        return hook.post_forward(layer, forward(*args, **kwargs))

    return hooked


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    """A layer's forward, checkpointed while switched on (bound to the layer, so a copy of
    the model gets a wrapper bound to the copy)."""
    forward = _unwrapped_forward(self)
    if not (getattr(self, _ACTIVE, False) and torch.is_grad_enabled()):
        return forward(*args, **kwargs)
    caches = [v for v in (*args, *kwargs.values()) if isinstance(v, Cache)]
    states = _cache_states(caches)

    def replayable(*inputs):
        _restore(caches, states)  # a no-op the first time; the replay sees the same cache
        return forward(*inputs, **kwargs)

    return checkpoint(replayable, *args, use_reentrant=False)


def _install(layer: nn.Module) -> None:
    """Wrap `layer.forward` once; the wrapper checkpoints only while switched on."""
    if not getattr(layer, _WRAPPED, False):
        layer.forward = types.MethodType(_checkpointed_forward, layer)
        setattr(layer, _WRAPPED, True)


@contextlib.contextmanager
def layer_checkpointing(backbone: Backbone, enabled: bool = True) -> Iterator[None]:
    """Checkpoint every layer of `backbone` for the forward passes run inside the block
    (their backward may run after it). `enabled=False` is a no-op, for config switches."""
    if not enabled:
        yield
        return
    layers = checkpointable_layers(backbone)
    if not layers:
        raise ConfigError(
            f"train.gradient_checkpointing: backbone {backbone.name!r} has no layers "
            "transformers marks as checkpointable; set it to false for this backbone"
        )
    for layer in layers:
        _install(layer)
        setattr(layer, _ACTIVE, True)
    try:
        yield
    finally:
        for layer in layers:
            setattr(layer, _ACTIVE, False)
