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

from softprompt.backbones import DEFAULT_BACKBONE
from softprompt.data.shots import check_shots
from softprompt.errors import ConfigError
from softprompt.train.config import TrainConfig
from softprompt.validate import MAX_CONFIG_BYTES, check_expanded_size


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
    shots: int | None = None  # K labelled rows per class (data/shots.py); None: every row
    seed: int = 0  # which k-shot sample (--data-seed); the test split never changes

    def __post_init__(self) -> None:
        check_shots(self.shots)


@dataclass
class RunTask:
    """One task of a multi-task run: its data, method and framing."""

    name: str
    data: DataConfig
    method: dict[str, Any]
    task: dict[str, Any]


BACKBONE_DTYPES = ("auto", "float32", "bfloat16", "float16")  # backbones/_precision.py
BACKBONE_QUANTIZE = ("none", "int8", "nf4")
BACKBONE_DEVICE_MAPS = ("none", "auto")  # backbones/_placement.py (explicit maps: Python API)


@dataclass
class BackboneConfig:
    """`backbone:` as a mapping: which backbone and how its frozen weights are held.
    `backbone: NAME` is short for `backbone: {name: NAME}`."""

    name: str = DEFAULT_BACKBONE
    dtype: str = "auto"  # auto = float32 on CPU, bf16 on CUDA (see backbones/_precision.py)
    quantize: str = "none"  # int8 (torchao) or nf4 (bitsandbytes, CPU or CUDA)
    adapter: str | None = None  # a PEFT LoRA folder merged in at load (backbones/adapter.py)
    device_map: str = "none"  # auto: spread over GPUs / CPU / disk by Accelerate


BASELINE_KINDS = ("lora", "full")  # RunConfig.compare; recipes.baselines trains them


@dataclass
class EvalConfig:
    """How the run scores its test split. `test_limit` > 0 scores a seeded,
    class-stratified sample of that many rows (recipes/run.py) instead of all of them."""

    test_limit: int = 0

    def __post_init__(self) -> None:
        if self.test_limit < 0:
            raise ConfigError(
                f"eval.test_limit: must be >= 0 (0 = every test row), got {self.test_limit}"
            )


@dataclass
class RunConfig:
    backbone: str = DEFAULT_BACKBONE
    data: DataConfig = field(default_factory=DataConfig)
    method: dict[str, Any] = field(
        default_factory=lambda: {"name": "soft-prompt", "n_tokens": 20, "init": "vocab"}
    )
    task: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/movie-sentiment"
    baseline: bool = True
    tasks: list[RunTask] | None = None  # several tasks at once; then data/method/task unused
    # baselines that tune the backbone itself, trained with the same config as report rows
    compare: list[str] = field(default_factory=list)  # "lora", "full" (recipes/baselines.py)
    backbone_dtype: str = "auto"  # written `backbone: {dtype: ...}` (BackboneConfig)
    backbone_quantize: str = "none"
    backbone_adapter: str | None = None  # `backbone: {adapter: DIR}`, --backbone-adapter
    backbone_device_map: str = "none"  # `backbone: {device_map: auto}`, --device-map
    eval: EvalConfig = field(default_factory=EvalConfig)  # --test-limit

    def __post_init__(self) -> None:
        for key, value, choices in (
            ("dtype", self.backbone_dtype, BACKBONE_DTYPES),
            ("quantize", self.backbone_quantize, BACKBONE_QUANTIZE),
            ("device_map", self.backbone_device_map, BACKBONE_DEVICE_MAPS),
        ):
            if value not in choices:
                raise ConfigError(
                    f"backbone.{key}: must be one of {', '.join(choices)}, got {value!r}"
                )
        wrong = [c for c in self.compare if c not in BASELINE_KINDS]
        if wrong:
            raise ConfigError(
                f"compare: unknown baseline(s) {', '.join(map(repr, wrong))}; "
                f"use {' and/or '.join(BASELINE_KINDS)}"
            )

    def task_specs(self) -> list[RunTask]:
        """The run's tasks: the `tasks` list, or the one task given by data/method/task."""
        if self.tasks:
            return self.tasks
        name = self.data.source.replace(".", "_")
        return [RunTask(name=name, data=self.data, method=self.method, task=self.task)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
_TOP_LEVEL = {
    "backbone": str,
    "out": str,
    "baseline": bool,
    "compare": list[str],
    "backbone_dtype": str,
    "backbone_quantize": str,
    "backbone_device_map": str,
}


def build_run_config(values: dict[str, Any]) -> RunConfig:
    """Nested dict (from YAML and flags) -> RunConfig.

    Every section is type-checked against its dataclass (method options against the
    method's own config class) before anything is built, and all unknown keys and bad
    values of all sections are reported in one error."""
    from softprompt.validate import Invalid, coerce

    if not isinstance(values, dict):
        raise ConfigError(f"the config must be a mapping of keys, got {type(values).__name__}")
    check_expanded_size(values, "config")  # shared parts expand in the walks below
    found = _Found()
    top = {f.name for f in dataclasses.fields(RunConfig)}
    found.unknown += sorted(str(k) for k in values if k not in top)
    values = {k: v for k, v in values.items() if k in top}
    if isinstance(values.get("data"), str):
        values["data"] = {"source": values["data"]}
    for name, cls in _SECTIONS.items():
        section = values.get(name)
        values[name] = found.add(name, cls, {} if section is None else section)
    values["method"] = _method(values.get("method"), found)
    values["task"] = _task(values.get("task"), found)
    tasks = _tasks(values["tasks"], found) if values.get("tasks") is not None else None
    values.update(_backbone(values.pop("backbone", None), found))
    for key, kind in _TOP_LEVEL.items():
        if key in values:
            try:
                values[key] = coerce(values[key], kind)
            except Invalid as exc:
                found.problems.append(f"{key}: {exc}")
    found.raise_if_any()
    if "eval_examples" not in values["train"] and _k_shot(values["data"], tasks):
        values["train"]["eval_examples"] = 0  # the K-per-class validation set, whole
    for name, cls in _SECTIONS.items():
        values[name] = cls(**values[name])
    if tasks is not None:
        values["tasks"] = [
            RunTask(t["name"], DataConfig(**t["data"]), t["method"], t["task"]) for t in tasks
        ]
    return RunConfig(**values)


def _k_shot(data: dict[str, Any], tasks: list[dict[str, Any]] | None) -> bool:
    """Whether every task runs in the k-shot regime. Its validation set is K rows per
    class by design (as LM-BFF and PET have it), so train.eval_examples' default cap of
    300 rows, meant for large validation splits, would cut a K=16 x 20-class set."""
    specs = [t["data"] for t in tasks] if tasks is not None else [data]
    return all(spec.get("shots") is not None for spec in specs)


class _Found:
    """Unknown keys and bad values gathered over every section, raised as one error."""

    def __init__(self) -> None:
        self.unknown: list[str] = []
        self.problems: list[str] = []
        self.known: dict[str, list[str]] = {}

    def add(
        self, section: str, cls: type, values: Any, hints: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        from softprompt.validate import check_fields

        checked = check_fields(section, cls, values, hints)
        self.unknown += checked.unknown
        self.problems += checked.problems
        if checked.unknown:
            self.known[section] = checked.known
        return checked.values

    def raise_if_any(self) -> None:
        parts = list(self.problems)
        if self.unknown:
            known = "; ".join(
                f"{s} keys are {', '.join(k) or '(none)'}" for s, k in self.known.items()
            )
            head = f"unknown config key(s) {', '.join(self.unknown)}"
            parts.insert(0, head + (f" ({known})" if known else ""))
        if parts:
            raise ConfigError("; ".join(parts))


def _method(method: Any, found: _Found, where: str = "method") -> dict[str, Any]:
    """`method: soft-prompt` or a mapping; options without a name refine the default method.
    Options are checked against the named method's config class."""
    from softprompt.methods import method_config_class
    from softprompt.validate import short

    default = RunConfig().method
    if method is None:
        return default
    if isinstance(method, str):
        method = {"name": method}
    if not isinstance(method, dict):
        found.problems.append(f"{where}: expected a method name or a mapping, got {short(method)}")
        return default
    method = dict(method) if "name" in method else {**default, **method}
    name = method.pop("name")
    if not isinstance(name, str):
        found.problems.append(f"{where}.name: expected a string, got {short(name)}")
        return {"name": name, **method}
    try:
        config_class = method_config_class(name)
    except ConfigError as exc:
        found.problems.append(where + str(exc)[len("method") :])
        return {"name": name, **method}
    return {"name": name, **found.add(where, config_class, method)}


def _backbone(backbone: Any, found: _Found) -> dict[str, Any]:
    """`backbone: NAME` or `backbone: {name, dtype, quantize}` -> RunConfig's fields."""
    if not isinstance(backbone, dict):
        return {} if backbone is None else {"backbone": backbone}
    checked = found.add("backbone", BackboneConfig, backbone)
    fields = {f"backbone_{k}": v for k, v in checked.items() if k != "name"}
    return {**fields, "backbone": checked.get("name", BackboneConfig.name)}


def _task(task: Any, found: _Found) -> dict[str, Any]:
    """Check task keys and types here so a typo is named before any model loads."""
    from softprompt.tasks import TaskConfig
    from softprompt.tasks.auto_verbalizer import parse_auto

    if task is None:
        return {}
    # a label's words may be one string or a list of them; "auto[:N]" chooses them
    hints = {"verbalizer": dict[str, str | list[str]] | str | None}
    checked = found.add("task", TaskConfig, task, hints)
    try:
        parse_auto(checked.get("verbalizer"))
    except ConfigError as exc:
        found.problems.append(str(exc))
    return checked


def _tasks(tasks: Any, found: _Found) -> list[dict[str, Any]]:
    """`tasks:` a list of {name, data, method, task}; every problem named by its index."""
    if not isinstance(tasks, list) or not tasks:
        found.problems.append(f"tasks: expected a non-empty list of tasks, got {tasks!r}")
        return []
    specs, names = [], set()
    for i, entry in enumerate(tasks):
        where = f"tasks[{i}]"
        if not isinstance(entry, dict):
            found.problems.append(f"{where}: expected a mapping with data, method and task")
            continue
        unknown = sorted(str(k) for k in set(entry) - {"name", "data", "method", "task"})
        if unknown:
            found.problems.append(
                f"{where}: unknown key(s) {', '.join(unknown)}; known: name, data, method, task"
            )
        data = entry.get("data")
        if data is None:
            found.problems.append(
                f"{where}.data: every task needs its dataset (a built-in name or a file)"
            )
            continue
        data = found.add(
            f"{where}.data", DataConfig, {"source": data} if isinstance(data, str) else data
        )
        name = entry.get("name", str(data.get("source", "")).replace(".", "_"))
        if not isinstance(name, str) or not name or "." in name or "/" in name:
            found.problems.append(f"{where}.name: a task name without '.' or '/', got {name!r}")
        elif name in names:
            found.problems.append(
                f"{where}.name: task {name!r} appears twice; give each task its own name"
            )
        names.add(name)
        method = _method(entry.get("method"), found, f"{where}.method")
        specs.append(
            {"name": name, "data": data, "method": method, "task": _task(entry.get("task"), found)}
        )
    return specs


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML run config, bounded: at most MAX_CONFIG_BYTES of text, and at most
    MAX_CONFIG_NODES values once aliases are expanded (an alias bomb is refused before
    anything walks it)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: no such file {path}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"--config {path}: {size:,} bytes (a run config is at most {MAX_CONFIG_BYTES:,}); "
            "is this the right file?"
        )
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"--config {path}: not UTF-8 text ({exc.reason}); save it as UTF-8"
        ) from None
    except (yaml.YAMLError, RecursionError) as exc:
        reason = " ".join(str(exc).split()) or "nested too deeply"
        raise ConfigError(f"--config {path}: not valid YAML ({reason})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping of keys")
    check_expanded_size(values, f"--config {path}")
    return values


def set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    """`train.lr` = 0.1 -> values['train']['lr'] = 0.1 (creating sections)."""
    *parents, leaf = dotted.split(".")
    if dotted == "backbone" and isinstance(values.get("backbone"), dict):
        values["backbone"]["name"] = value  # --backbone over a YAML mapping keeps its dtype
        return
    node = values
    for key in parents:
        if isinstance(node.get(key), str):
            node[key] = {"source" if key == "data" else "name": node[key]}
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: expected a mapping of options, got {type(node).__name__}")
    node[leaf] = value
