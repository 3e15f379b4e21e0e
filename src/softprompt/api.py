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

from softprompt.backbones import Backbone, load_backbone
from softprompt.config import DataConfig, RunConfig
from softprompt.data import Dataset, load_dataset
from softprompt.evaluate import evaluate
from softprompt.model import PromptModel, load_prompt_meta
from softprompt.presets import task_defaults
from softprompt.promptfile import atomic_write_text
from softprompt.tasks import TaskConfig
from softprompt.train import TrainResult, distributed, train
from softprompt.train.distributed import ProcessInfo

__all__ = [
    "RunConfig",
    "RunReport",
    "build_model",
    "export_prompt",
    "load_data",
    "load_prompt",
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
    return TaskConfig(**values)


def build_model(
    backbone: Backbone, dataset: Dataset, method: dict[str, Any], task: dict[str, Any]
) -> PromptModel:
    options = {k: v for k, v in method.items() if k != "name"}
    return PromptModel(
        backbone, task_config_for(dataset, task), method=method["name"], method_options=options
    )


def load_prompt(path: str | Path, backbone: Backbone | str | None = None) -> PromptModel:
    """Load a prompt file onto its backbone (by default the one named in the file)."""
    if backbone is None or isinstance(backbone, str):
        meta = load_prompt_meta(path)
        backbone = load_backbone(backbone or meta["backbone"]["name"])
    return PromptModel.load(path, backbone)


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
    flat = model.flattened()
    return flat.save(out, **carried, flattened_from=model.describe()["method"])


@dataclass
class RunReport:
    rows: list[dict[str, Any]]
    result: TrainResult
    out_dir: Path

    def markdown(self) -> str:
        head = "| prompt | test accuracy | test macro-F1 | trainable params | file size | train time |\n|---|---|---|---|---|---|\n"
        lines = [
            f"| {r['name']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['trainable_parameters']:,} | "
            f"{r['file_bytes'] / 1024:.1f} KiB | {r['train_seconds']:.0f} s |"
            if "accuracy" in r
            else f"| {r['name']} | loss {r['loss']:.4f} | - | {r['trainable_parameters']:,} | {r['file_bytes'] / 1024:.1f} KiB | {r['train_seconds']:.0f} s |"
            for r in self.rows
        ]
        rows = self.rows[-1]["examples"]
        return (
            head + "\n".join(lines) + f"\n\ntest split: {rows:,} {'row' if rows == 1 else 'rows'}\n"
        )


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


def run(config: RunConfig, *, resume: bool = False, progress: bool = True) -> RunReport:
    """Train a prompt, then score zero-shot and tuned on the test split; write a report."""
    process = distributed.setup()  # under torchrun each process scores a share of the test set
    dataset = load_data(config.data)  # first: a bad data file fails before the model loads
    backbone = load_backbone(config.backbone)
    out_dir = Path(config.out)
    model = build_model(backbone, dataset, config.method, config.task)
    rows = []
    if config.baseline and model.task.label_token_ids():
        zero_shot = build_model(backbone, dataset, {"name": "none"}, config.task)
        rows.append(
            _test_row(
                "zero-shot (template + label words)",
                zero_shot,
                dataset,
                config.train.eval_batch_size,
                process,
                file_bytes=0,
                train_seconds=0.0,
            )
        )
    if config.baseline and backbone.spec.kind == "vision" and config.method["name"] != "none":
        from softprompt.tasks.image import head_only_baseline

        probe, probe_result = head_only_baseline(
            backbone, dataset, config, resume=resume, progress=progress
        )
        rows.append(
            _test_row(
                f"head-only linear probe (best of step {probe_result.best_step})",
                probe,
                dataset,
                config.train.eval_batch_size,
                process,
                file_bytes=probe_result.prompt_path.stat().st_size,
                train_seconds=probe_result.seconds,
            )
        )
    result = train(
        model,
        dataset,
        config.train,
        out_dir,
        resume=resume,
        meta={"run": config.to_dict()},
        progress=progress,
    )
    tuned = PromptModel.load(result.prompt_path, backbone)
    rows.append(
        _test_row(
            f"{config.method['name']} (best of step {result.best_step})",
            tuned,
            dataset,
            config.train.eval_batch_size,
            process,
            file_bytes=result.prompt_path.stat().st_size,
            train_seconds=result.seconds,  # the loop's own clock, summed over resumes
        )
    )
    report = RunReport(rows=rows, result=result, out_dir=out_dir)
    if not process.main:
        return report
    atomic_write_text(out_dir / "report.md", report.markdown())
    atomic_write_text(
        out_dir / "report.json", json.dumps({"rows": rows, "config": config.to_dict()}, indent=2)
    )
    return report
