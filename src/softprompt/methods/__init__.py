"""Prompt methods, registered by name.

A method is an `nn.Module` whose `forward()` returns a `Prompt`, built from a
dataclass config (see `registry.Method`). Adding a method means adding one file
here that calls `register_method`; nothing else in the package changes: the registry
imports every module of this package on its first lookup (`registry.import_modules`),
so no import list names the methods.
"""

from softprompt.methods.registry import (
    METHODS,
    Method,
    MethodContext,
    available_methods,
    build_method,
    make_method_config,
    method_config_class,
    recommended_lr,
    register_method,
    transfer_embeddings,
)

__all__ = [
    "METHODS",
    "Method",
    "MethodContext",
    "available_methods",
    "build_method",
    "make_method_config",
    "method_config_class",
    "recommended_lr",
    "register_method",
    "transfer_embeddings",
]
