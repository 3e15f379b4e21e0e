"""Name -> (config class, module class) registry for prompt methods."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from softprompt.backbones import Backbone
from softprompt.errors import ConfigError


@dataclass
class MethodContext:
    """What a method may need to initialise itself, beyond its own config.

    `label_token_ids` are the token ids of each class's label words (for the
    `labels` init); empty when the task has no verbalizer.
    """

    backbone: Backbone
    label_token_ids: list[list[int]] = field(default_factory=list)
    generator: torch.Generator | None = None


_REGISTRY: dict[str, tuple[type, type[nn.Module]]] = {}


def register_method(name: str, config_class: type) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make `name` buildable from a config dict."""

    def decorate(module_class: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        _REGISTRY[name] = (config_class, module_class)
        module_class.method_name = name
        return module_class

    return decorate


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_config_class(name: str) -> type:
    if name not in _REGISTRY:
        raise ConfigError(
            f"method: unknown method {name!r}; choose one of {', '.join(available_methods())}"
        )
    return _REGISTRY[name][0]


def make_method_config(name: str, options: dict[str, Any]) -> Any:
    """Build the method's dataclass config, naming any unknown key."""
    config_class = method_config_class(name)
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"method.{unknown[0]}: not an option of method {name!r}; "
            f"its options are {', '.join(sorted(known))}"
        )
    return config_class(**options)


def build_method(name: str, options: dict[str, Any], context: MethodContext) -> nn.Module:
    """Instantiate a registered method from its name and config options."""
    config = make_method_config(name, options)
    module_class = _REGISTRY[name][1]
    return module_class(config, context)
