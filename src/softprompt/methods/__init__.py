"""Prompt methods, registered by name.

A method is an `nn.Module` whose `forward()` returns a `Prompt`, built from a
dataclass config (see `registry.Method`). Adding a method means adding one file
here that calls `register_method`; nothing else in the package changes.
"""

from softprompt.methods.registry import (
    METHODS,
    Method,
    MethodContext,
    available_methods,
    build_method,
    make_method_config,
    method_config_class,
    register_method,
)

# Importing the modules registers them.
from softprompt.methods import multitask_prompt, no_prompt, p_tuning, prefix_tuning, soft_prompt  # noqa: E402,F401  isort: skip
from softprompt.methods import dart  # noqa: E402,F401  isort: skip
from softprompt.methods import vpt_deep, vpt_shallow  # noqa: E402,F401  isort: skip

__all__ = [
    "METHODS",
    "Method",
    "MethodContext",
    "available_methods",
    "build_method",
    "make_method_config",
    "method_config_class",
    "register_method",
]
