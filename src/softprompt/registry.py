"""One registry shape for everything built by name from a config: methods, tasks.

An entry is a name, a dataclass config and a builder. `config()` turns a user's
options into the typed config, naming every unknown key and every wrongly typed
value at once, before any model or data is loaded.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from softprompt.errors import ConfigError

T = TypeVar("T")


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether `value` fits a simple annotation (int, float, bool, str, list, dict, unions)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is not None:
        return isinstance(value, origin)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")


def typed_config(config_class: type[T], options: dict[str, Any], section: str) -> T:
    """Build a dataclass config from options, reporting all bad keys and types in one error."""
    if not isinstance(options, dict):
        raise ConfigError(f"{section}: expected a mapping of options, got {options!r}")
    hints = typing.get_type_hints(config_class)
    known = {f.name for f in dataclasses.fields(config_class) if f.init}
    problems = [
        f"{section}.{key}: unknown option (known: {', '.join(sorted(known))})"
        for key in sorted(set(options) - known)
    ]
    problems += [
        f"{section}.{key}: expected {_type_name(hints[key])}, got {value!r}"
        for key, value in options.items()
        if key in known and not _accepts(hints[key], value)
    ]
    if problems:
        raise ConfigError("; ".join(problems))
    values = {
        k: float(v) if hints[k] is float and isinstance(v, int) else v for k, v in options.items()
    }
    return config_class(**values)


class Registry(Generic[T]):
    """Name -> (config class, builder) for one kind of component."""

    def __init__(self, kind: str, section: str) -> None:
        self.kind, self.section = kind, section
        self._entries: dict[str, tuple[type, Callable[..., T]]] = {}

    def register(
        self, name: str, config_class: type
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: make `name` buildable from a config mapping."""

        def decorate(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = (config_class, builder)
            if isinstance(builder, type):
                builder.registered_name = name
            return builder

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def _entry(self, name: str) -> tuple[type, Callable[..., T]]:
        if name not in self._entries:
            raise ConfigError(
                f"{self.section}.name: unknown {self.kind} {name!r}; "
                f"choose one of {', '.join(self.names())}"
            )
        return self._entries[name]

    def config_class(self, name: str) -> type:
        return self._entry(name)[0]

    def builder(self, name: str) -> Callable[..., T]:
        """What `name` builds (for methods, the class), e.g. to read its `summary`."""
        return self._entry(name)[1]

    def config(self, name: str, options: dict[str, Any], where: str | None = None) -> Any:
        """Typed config of `name` from options; errors are prefixed with `where` (the
        config key the options sit under, e.g. tasks[1].method)."""
        return typed_config(self._entry(name)[0], options, where or self.section)

    def build(self, name: str, config: Any, *args: Any) -> T:
        """Build from an already validated config (see `config`)."""
        return self._entry(name)[1](config, *args)
