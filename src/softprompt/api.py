"""The Python API: the few calls a user needs, each a thin composition.

from softprompt import api
report = api.run(api.RunConfig())                       # train + report
model = api.load_prompt("runs/movie-sentiment/prompt.safetensors")
model.predict(["A gorgeous, moving film."])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt import distributed
from softprompt.backbones import Backbone, load_backbone
from softprompt.baselines import tuned_rows
from softprompt.config import DataConfig, RunConfig, TaskSpec
from softprompt.data import Dataset, load_dataset
from softprompt.device import resolve_device
from softprompt.distributed import ProcessInfo
from softprompt.errors import ConfigError
from softprompt.evaluate import evaluate
from softprompt.files import atomic_write_text
from softprompt.model import MultiTaskModel, PromptModel, load_prompt_meta
from softprompt.presets import task_defaults
from softprompt.tasks import TaskConfig
from softprompt.train import TrainResult, run_dir, train

__all__ = [
    "RunConfig",
    "RunReport",
    "build_model",
    "export_prompt",
    "load_data",
    "load_prompt",
    "load_prompts",
    "run",
    "task_config_for",
]


def load_data(config: DataConfig, seed: int = 0) -> Dataset:
    return load_dataset(
        config.source,
        text_column=config.text_column,
        label_column=config.label_column,
        task=config.task,
        labels=config.labels,
        validation=config.validation,
        test=config.test,
        seed=seed,
    )


def task_config_for(dataset: Dataset, overrides: dict[str, Any]) -> TaskConfig:
    """Built-in framing for the dataset, then the user's overrides on top."""
    values = {
        "kind": dataset.task,
        "labels": list(dataset.labels),
        **task_defaults(dataset.name),
        **overrides,
    }
    missing = sorted(set(dataset.labels) - set(values["labels"]))
    if dataset.task == "classification" and missing:
        raise ConfigError(
            f"task.labels: dataset {dataset.name!r} has labels {missing} that task.labels "
            f"{values['labels']} lacks; list every label of the data (or leave task.labels out)"
        )
    return TaskConfig(**values)


def build_model(
    backbone: Backbone,
    dataset: Dataset,
    method: dict[str, Any],
    task: dict[str, Any],
    shared: dict[str, Any] | None = None,
) -> PromptModel:
    options = {k: v for k, v in method.items() if k != "name"}
    return PromptModel(
        backbone,
        task_config_for(dataset, task),
        method=method["name"],
        method_options=options,
        shared=shared,
    )


def load_prompt(path: str | Path, backbone: Backbone | str | None = None) -> PromptModel:
    """Load a prompt file onto its backbone (by default the one named in the file)."""
    if backbone is None or isinstance(backbone, str):
        meta = load_prompt_meta(path)
        backbone = load_backbone(backbone or meta["backbone"]["name"])
    return PromptModel.load(path, backbone)


def load_prompts(
    paths: dict[str, str | Path], backbone: Backbone | str | None = None
) -> MultiTaskModel:
    """Several prompt files (task name -> path) on one backbone, answering mixed batches:
    `model.predict([(task, text), ...])`."""
    if backbone is None or isinstance(backbone, str):
        first = load_prompt_meta(next(iter(paths.values())))
        backbone = load_backbone(backbone or first["backbone"]["name"])
    return MultiTaskModel.from_files(paths, backbone)


def export_prompt(
    path: str | Path, out: str | Path, backbone: Backbone | str | None = None
) -> Path:
    """Write `path`'s prompt without its training-only parts (see PromptModel.flattened).

    The training record (run config, metrics, dataset) is carried over, plus the
    method it was flattened from. The scores do not change."""
    model = load_prompt(path, backbone)
    meta = load_prompt_meta(path)
    carried = {k: v for k, v in meta.items() if k not in model.describe() and k != "tensors"}
    carried.pop("file_bytes", None)
    carried.setdefault("flattened_from", model.describe()["method"])  # kept on re-export
    return model.flattened().save(out, **carried)


@dataclass
class RunReport:
    rows: list[dict[str, Any]]
    result: TrainResult
    out_dir: Path

    def markdown(self) -> str:
        several = len({r.get("task") for r in self.rows}) > 1
        columns = _metric_columns(self.rows)
        task_head = "| task " if several else ""
        titles = "".join(f"| test {METRIC_TITLES.get(c, c)} " for c in columns)
        rules = "|---" * (len(columns) + 4 + several)
        head = (
            f"{task_head}| prompt {titles}| trainable params | file size | train time |\n{rules}|\n"
        )
        lines = [
            (f"| {r['task']} " if several else "") + _score_cells(r, columns) for r in self.rows
        ]
        tested = {r.get("task"): r["examples"] for r in self.rows}
        sizes = ", ".join(f"{n:,} {'row' if n == 1 else 'rows'}" for n in tested.values())
        return head + "\n".join(lines) + f"\n\ntest split: {sizes}\n"


# Report columns, in order; a column appears when any row (any task) has that score.
METRIC_TITLES = {"entity_f1": "entity F1", "accuracy": "accuracy", "macro_f1": "macro-F1"}


def _metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    present = [name for name in METRIC_TITLES if any(name in r for r in rows)]
    unscored = any(not any(name in r for name in present) for r in rows)  # generation rows
    return present + ["loss"] * unscored


def _score_cells(r: dict[str, Any], columns: list[str]) -> str:
    size, seconds = f"{r['file_bytes'] / 1024:.1f} KiB", f"{r['train_seconds']:.0f} s"
    scores = " | ".join(f"{r[c]:.4f}" if c in r else "-" for c in columns)
    return f"| {r['name']} | {scores} | {r['trainable_parameters']:,} | {size} | {seconds} |"


def _test_row(
    name: str,
    model: PromptModel,
    dataset: Dataset,
    batch_size: int,
    process: ProcessInfo,
    **extra: Any,
) -> dict[str, Any]:
    scores = evaluate(model, dataset.test, batch_size=batch_size, process=process, progress=True)
    return {"name": name, **scores, "trainable_parameters": model.num_trainable(), **extra}


def _zero_shot_rows(
    config: RunConfig, backbone: Backbone, data: dict[str, Dataset], process: ProcessInfo
) -> list[dict[str, Any]]:
    """The template and label words with no prompt, for every task that has label words."""
    rows = []
    for spec in config.task_specs():
        zero_shot = build_model(backbone, data[spec.name], {"name": "none"}, spec.task)
        if not (config.baseline and zero_shot.task.label_token_ids()):
            continue
        row = _test_row(
            "zero-shot (template + label words)",
            zero_shot,
            data[spec.name],
            config.train.eval_batch_size,
            process,
            file_bytes=0,
            train_seconds=0.0,
        )
        rows.append({"task": spec.name, **row})
    return rows


def _head_only_rows(
    config: RunConfig,
    backbone: Backbone,
    specs: list[TaskSpec],
    data: dict[str, Dataset],
    process: ProcessInfo,
    resume: bool,
    progress: bool,
) -> list[dict[str, Any]]:
    """Images have no zero-shot: a visual prompt's report shows the linear probe instead,
    trained with the same steps into OUT/head-only (one task runs only)."""
    if not config.baseline or backbone.spec.kind != "vision" or len(specs) != 1:
        return []
    if specs[0].method["name"] == "none":
        return []
    from softprompt.tasks.image import head_only_baseline

    dataset = data[specs[0].name]
    probe, result = head_only_baseline(backbone, dataset, config, resume=resume, progress=progress)
    row = _test_row(
        f"head-only linear probe (best of step {result.best_step})",
        probe,
        dataset,
        config.train.eval_batch_size,
        process,
        file_bytes=result.prompt_path.stat().st_size,
        train_seconds=result.seconds,
    )
    return [{"task": specs[0].name, **row}]


def build_models(
    backbone: Backbone, specs: list[TaskSpec], data: dict[str, Dataset]
) -> MultiTaskModel:
    """One (method, task) per spec on one backbone; methods may share modules."""
    shared: dict[str, Any] = {}
    return MultiTaskModel(
        {s.name: build_model(backbone, data[s.name], s.method, s.task, shared) for s in specs}
    )


@run_dir.claims_out_dir(
    lambda bound: (bound.arguments["config"].out, bound.arguments["config"].train)
)
def run(config: RunConfig, *, resume: bool = False, progress: bool = True) -> RunReport:
    """Train prompts for one task or several, then score zero-shot and tuned on each test
    split; write a report. The output folder is checked and locked before anything loads."""
    device = distributed.local_device(resolve_device(config.train.device))
    process = distributed.setup(device)  # under torchrun each process scores a test share
    specs = config.task_specs()
    # first: a bad data file fails before the model loads
    data = {s.name: load_data(s.data) for s in specs}
    backbone = load_backbone(config.backbone)
    backbone.model.to(device)
    out_dir = Path(config.out)
    model = build_models(backbone, specs, data)
    rows = _zero_shot_rows(config, backbone, data, process)
    rows += _head_only_rows(config, backbone, specs, data, process, resume, progress)
    rows += tuned_rows(config, backbone, specs, data, process, resume, progress)
    result = train(
        model,
        data,
        config.train,
        out_dir,
        resume=resume,
        meta={"run": config.to_dict()},
        progress=progress,
    )
    for spec in specs:
        path = result.prompt_paths[spec.name]
        tuned = PromptModel.load(path, backbone)
        best = result.best[spec.name]["step"]
        row = _test_row(
            f"{spec.method['name']} (best of step {best})",
            tuned,
            data[spec.name],
            config.train.eval_batch_size,
            process,
            file_bytes=path.stat().st_size,
            train_seconds=result.seconds,  # the loop's own clock, summed over resumes
        )
        rows.append({"task": spec.name, **row})
    rows.sort(key=lambda r: [s.name for s in specs].index(r["task"]))
    report = RunReport(rows=rows, result=result, out_dir=out_dir)
    if not process.main:
        return report
    atomic_write_text(out_dir / "report.md", report.markdown())
    atomic_write_text(
        out_dir / "report.json", json.dumps({"rows": rows, "config": config.to_dict()}, indent=2)
    )
    return report
