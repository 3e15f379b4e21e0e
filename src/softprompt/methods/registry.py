"""The method registry and the protocol every method follows.

A method is an `nn.Module` built from a dataclass config and a `MethodContext`;
`forward()` returns the `Prompt` it stands for (computed once per step, whatever the
batch size: rows pick it by index, see inject/prompt.py). `flatten()` says how to
serve it without training-only parts (an encoder, an MLP), or None when it is flat.

Optional hooks, each found with getattr so a method without them changes nothing:
`auxiliary_loss(injector, prompt, rows) -> ()` is a training objective of the method's
own, added to the task loss in training mode only (model.MultiTaskModel.forward; DART's
fluency loss); `label_embeddings() -> (C, d)` gives learned output rows for the classes'
label tokens, which the verbalizer then scores against (DART);
`recommended_lr` (a class attribute, float) is the learning rate `softprompt compare`
trains the method at unless the user sets one; `transfer_embeddings() -> (n, d)` gives the virtual tokens another prompt's `init: file`
starts from, when they are not the flat form's `embeddings` (MPT's shared prompt; see
`transfer_embeddings` below).

A method's integer options are bounded by its config class's `BOUNDS` (field -> (low,
high)), which validate.check_fields enforces wherever the options are written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from softprompt.backbones import Backbone
from softprompt.errors import ConfigError
from softprompt.inject import Prompt
from softprompt.registry import Registry

Flat = tuple[str, dict[str, Any], dict[str, torch.Tensor]]  # method name, options, tensors


@dataclass
class MethodContext:
    """What a method may need to initialise itself, beyond its own config.

    `label_token_ids` are the token ids of each class's label words (for the
    `labels` init); empty when the task has no verbalizer.
    """

    backbone: Backbone
    injector: Any = None  # the backbone's Injector (prefix tuning reads the model's own K/V)
    label_token_ids: list[list[int]] = field(default_factory=list)
    generator: torch.Generator | None = None
    # modules shared by the methods of one multi-task model (e.g. multitask prompt
    # tuning's common prompt), by key; None when the method is built alone
    shared: dict[str, nn.Module] | None = None
    # path -> another prompt file's virtual tokens (n, d) on this backbone, for the `file`
    # init; the model passes its loader in, so methods never import the model
    file_embeddings: Callable[[str], torch.Tensor] | None = None


@runtime_checkable
class Method(Protocol):
    config: Any
    registered_name: str

    def forward(self) -> Prompt: ...

    def flatten(self) -> Flat | None: ...

    def parameters(self): ...


METHODS: Registry[nn.Module] = Registry("method", "method", package="softprompt.methods")


def register_method(name: str, config_class: type) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make `name` buildable from a config dict."""
    return METHODS.register(name, config_class)


def available_methods() -> list[str]:
    return METHODS.names()


def method_config_class(name: str) -> type:
    return METHODS.config_class(name)


def make_method_config(name: str, options: dict[str, Any], where: str = "method") -> Any:
    """Build the method's typed config, naming every unknown key and bad value at once."""
    try:
        return METHODS.config(name, options, where)
    except ConfigError as exc:  # checks inside a config's own __post_init__ say "method."
        message = str(exc)
        if where != "method" and message.startswith("method."):
            message = where + message[len("method") :]
        raise ConfigError(message) from None


def recommended_lr(name: str) -> float | None:
    """The learning rate a method's class recommends (its `recommended_lr` attribute), or
    None when it names none: `compare` trains each method at its own by default, since
    one lr for every method (0.03) made some collapse while others were still slow."""
    return getattr(METHODS.builder(name), "recommended_lr", None)


def transfer_embeddings(method: nn.Module) -> torch.Tensor | None:
    """(n, d) the virtual tokens that `init: file` copies from `method` (SPoT-style
    transfer): its own `transfer_embeddings()` when it has one, else the `embeddings`
    tensor of its flat form (P-tuning: what its encoder produces), else None (a K/V
    prefix has no tokens to copy)."""
    own = getattr(method, "transfer_embeddings", None)
    if own is not None:
        return own()
    flat = method.flatten()
    tensors = flat[2] if flat is not None else dict(method.state_dict())
    return tensors.get("embeddings")


def build_method(name: str, options: dict[str, Any] | Any, context: MethodContext) -> nn.Module:
    """Instantiate a registered method from its name and config (or raw options)."""
    config = options if not isinstance(options, dict) else make_method_config(name, options)
    return METHODS.build(name, config, context)
