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
class TaskSpec:
    """One task of a multi-task run: its data, method and framing."""

    name: str
    data: DataConfig
    method: dict[str, Any]
    task: dict[str, Any]


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
    tasks: list[TaskSpec] | None = None  # several tasks at once; then data/method/task unused

    def task_specs(self) -> list[TaskSpec]:
        """The run's tasks: the `tasks` list, or the one task given by data/method/task."""
        if self.tasks:
            return self.tasks
        name = self.data.source.replace(".", "_")
        return [TaskSpec(name=name, data=self.data, method=self.method, task=self.task)]

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
    if values.get("tasks") is not None:
        values["tasks"] = _tasks(values["tasks"])
    if "baseline" in values:
        values["baseline"] = _typed("", "baseline", values["baseline"], bool)
    return RunConfig(**values)


def _method(method: Any, where: str = "method") -> dict[str, Any]:
    """`method: soft-prompt` or a mapping; options without a name refine the default method.

    The options are checked against the method's typed config here, before anything loads."""
    from softprompt.methods import make_method_config

    default = RunConfig().method
    if method is None:
        method = default
    elif isinstance(method, str):
        method = {"name": method}
    elif not isinstance(method, dict):
        raise ConfigError(f"{where}: expected a method name or a mapping, got {method!r}")
    else:
        method = dict(method) if "name" in method else {**default, **method}
    if not isinstance(method["name"], str):
        raise ConfigError(f"{where}.name: expected a method name, got {method['name']!r}")
    make_method_config(method["name"], {k: v for k, v in method.items() if k != "name"}, where)
    return method


def _tasks(tasks: Any) -> list[TaskSpec]:
    """`tasks:` a list of {name, data, method, task}; every problem named by its index."""
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError(f"tasks: expected a non-empty list of tasks, got {tasks!r}")
    specs, names = [], set()
    for i, entry in enumerate(tasks):
        where = f"tasks[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{where}: expected a mapping with data, method and task, got {entry!r}"
            )
        unknown = sorted(set(entry) - {"name", "data", "method", "task"})
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; known: name, data, method, task"
            )
        data = entry.get("data")
        if data is None:
            raise ConfigError(
                f"{where}.data: every task needs its dataset (a built-in name or a file)"
            )
        data = _section("data", {"source": data} if isinstance(data, str) else data)
        name = entry.get("name", data.source.replace(".", "_"))
        if not isinstance(name, str) or not name or "." in name or "/" in name:
            raise ConfigError(f"{where}.name: a task name without '.' or '/', got {name!r}")
        if name in names:
            raise ConfigError(
                f"{where}.name: task {name!r} appears twice; give each task its own name"
            )
        names.add(name)
        specs.append(
            TaskSpec(
                name,
                data,
                _method(entry.get("method"), f"{where}.method"),
                _task(entry.get("task")),
            )
        )
    return specs


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
