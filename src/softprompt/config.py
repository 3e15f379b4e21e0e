"""A whole run as one config: YAML file and/or flags, validated with key names.

Every error names the config key (or flag) at fault, and all unknown keys are
reported together so a user fixes a config in one pass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from softprompt.errors import ConfigError
from softprompt.train.config import TrainConfig


@dataclass
class DataConfig:
    """`source`: a built-in dataset name or a CSV/JSONL path."""

    source: str = "movie-sentiment"
    text_column: str = "text"
    label_column: str = "label"
    task: str = "classification"
    validation: str | None = None
    test: str | None = None
    labels: list[str] | None = None


@dataclass
class RunConfig:
    backbone: str = "smollm2-135m"
    data: DataConfig = field(default_factory=DataConfig)
    method: dict[str, Any] = field(
        default_factory=lambda: {"name": "soft-prompt", "n_tokens": 20, "init": "vocab"}
    )
    task: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/movie-sentiment"
    baseline: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"data": DataConfig, "train": TrainConfig}


def _typed(section: str, key: str, value: Any, annotation: Any) -> Any:
    """Coerce flag strings to the field's type; complain with the key name."""
    kind = getattr(annotation, "__name__", str(annotation))
    where = f"{section}.{key}" if section else key
    try:
        if isinstance(value, str) and ("int" in kind and "str" not in kind):
            return int(value)
        if isinstance(value, str) and "float" in kind:
            return float(value)
        if isinstance(value, str) and "bool" in kind:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
    except ValueError:
        raise ConfigError(f"{where}: expected {kind}, got {value!r}") from None
    return value


def _section(name: str, values: dict[str, Any]) -> Any:
    cls = _SECTIONS[name]
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a mapping of options, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(f'{name}.{k}' for k in unknown)}; known: {', '.join(fields)}"
        )
    typed = {k: _typed(name, k, v, fields[k].type) for k, v in values.items()}
    return cls(**typed)


def build_run_config(values: dict[str, Any]) -> RunConfig:
    """Nested dict (from YAML and flags) -> RunConfig, naming every bad key."""
    top = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - top)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(top))}"
        )
    values = dict(values)
    if isinstance(values.get("data"), str):
        values["data"] = {"source": values["data"]}
    for name in _SECTIONS:
        values[name] = _section(name, values.get(name, {}) or {})
    values["method"] = _method(values.get("method"))
    values["task"] = _task(values.get("task"))
    if "baseline" in values:
        values["baseline"] = _typed("", "baseline", values["baseline"], bool)
    return RunConfig(**values)


def _method(method: Any) -> dict[str, Any]:
    """`method: soft-prompt` or a mapping; options without a name refine the default method."""
    default = RunConfig().method
    if method is None:
        return default
    if isinstance(method, str):
        return {"name": method}
    if not isinstance(method, dict):
        raise ConfigError(f"method: expected a method name or a mapping, got {method!r}")
    return dict(method) if "name" in method else {**default, **method}


def _task(task: Any) -> dict[str, Any]:
    """Check task keys here so a typo is named before any model loads."""
    from softprompt.tasks import TaskConfig

    if task is None:
        return {}
    if not isinstance(task, dict):
        raise ConfigError(f"task: expected a mapping of options, got {task!r}")
    known = {f.name for f in dataclasses.fields(TaskConfig)}
    unknown = sorted(set(task) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(f'task.{k}' for k in unknown)}; known: {', '.join(sorted(known))}"
        )
    return dict(task)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: no such file {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({exc})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping of keys")
    return values


def set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    """`train.lr` = 0.1 -> values['train']['lr'] = 0.1 (creating sections)."""
    *parents, leaf = dotted.split(".")
    node = values
    for key in parents:
        if isinstance(node.get(key), str):
            node[key] = {"source" if key == "data" else "name": node[key]}
        node = node.setdefault(key, {})
    node[leaf] = value
