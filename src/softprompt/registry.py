"""One registry shape for everything built by name: methods, tasks, search methods.

An entry is a name, a dataclass config (None when the entry checks its own options) and
a builder. `config()` turns a user's options into the typed config with the one config
checker (`validate.check_fields`, which YAML configs and prompt-file headers go through
too), naming every unknown key and every wrongly typed value at once, before any model
or data is loaded.

A registry given its package finds its entries itself: the first lookup imports every
public module of that package, and each module registers what it defines. So adding a
method (or a task, or a search method) is adding one file; no import list names it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from softprompt.errors import ConfigError
from softprompt.validate import check_fields

T = TypeVar("T")


def import_modules(package: str) -> list[str]:
    """Import every module of `package` whose name does not start with `_` (so each
    registers what it defines); the names imported, sorted."""
    path = importlib.import_module(package).__path__
    names = sorted(m.name for m in pkgutil.iter_modules(path) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names


def typed_config(config_class: type[T], options: Any, section: str) -> T:
    """Build a dataclass config from options, reporting all bad keys and values in one error."""
    checked = check_fields(section, config_class, options)
    known = ", ".join(sorted(checked.known))
    problems = [f"{key}: unknown option (known: {known})" for key in checked.unknown]
    problems += checked.problems
    if problems:
        raise ConfigError("; ".join(problems))
    return config_class(**checked.values)


class Registry(Generic[T]):
    """Name -> (config class, builder) for one kind of component.

    `package`, when given, is imported module by module on the first lookup (see the
    module docstring); `name_key` is the config key an unknown name is reported under."""

    def __init__(
        self, kind: str, section: str, package: str | None = None, name_key: str | None = None
    ) -> None:
        self.kind, self.section, self.package = kind, section, package
        self.name_key = name_key or f"{section}.name"
        self._entries: dict[str, tuple[type | None, Callable[..., T]]] = {}
        self._discovered = package is None

    def register(
        self, name: str, config_class: type | None
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

    def _discover(self) -> None:
        if not self._discovered and self.package is not None:
            self._discovered = True
            import_modules(self.package)

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def _entry(self, name: str) -> tuple[type | None, Callable[..., T]]:
        self._discover()
        if name not in self._entries:
            raise ConfigError(
                f"{self.name_key}: unknown {self.kind} {name!r}; "
                f"choose one of {', '.join(self.names())}"
            )
        return self._entries[name]

    def config_class(self, name: str) -> type | None:
        return self._entry(name)[0]

    def builder(self, name: str) -> Callable[..., T]:
        """What `name` builds (for methods, the class), e.g. to read its `summary`."""
        return self._entry(name)[1]

    def config(self, name: str, options: dict[str, Any], where: str | None = None) -> Any:
        """Typed config of `name` from options; errors are prefixed with `where` (the
        config key the options sit under, e.g. tasks[1].method). An entry registered
        without a config class gets its options as given, to check itself."""
        config_class = self._entry(name)[0]
        if config_class is None:
            return dict(options)
        return typed_config(config_class, options, where or self.section)

    def build(self, name: str, config: Any, *args: Any) -> T:
        """Build from an already validated config (see `config`)."""
        return self._entry(name)[1](config, *args)
