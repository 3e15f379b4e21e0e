"""`softprompt train` as one call: train prompts for one task or several, then score
zero-shot, the baselines and the tuned prompts on each test split; write a report.

from softprompt.recipes.run import run
report = run(RunConfig())                       # train + report
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softprompt import distributed
from softprompt.backbones import Backbone, load_backbone
from softprompt.config import DataConfig, RunConfig, RunTask
from softprompt.data import Dataset, load_dataset
from softprompt.data.shots import few_shot_dataset
from softprompt.device import resolve_device
from softprompt.distributed import ProcessInfo
from softprompt.evaluate import evaluate
from softprompt.files import atomic_write_text
from softprompt.model import MultiTaskModel, PromptModel, build_model
from softprompt.recipes.baselines import head_only_baseline, tuned_rows
from softprompt.recipes.report import RunReport
from softprompt.train import run_dir, train


def load_data(config: DataConfig, seed: int = 0) -> Dataset:
    """The run's dataset; with `data.shots`, its k-shot sample (data/shots.py)."""
    dataset = load_dataset(
        config.source,
        text_column=config.text_column,
        label_column=config.label_column,
        task=config.task,
        labels=config.labels,
        validation=config.validation,
        test=config.test,
        seed=seed,
    )
    return few_shot_dataset(dataset, config.shots, config.seed)


def build_models(
    backbone: Backbone, specs: list[RunTask], data: dict[str, Dataset]
) -> MultiTaskModel:
    """One (method, task) per spec on one backbone; methods may share modules."""
    shared: dict[str, Any] = {}
    return MultiTaskModel(
        {s.name: build_model(backbone, data[s.name], s.method, s.task, shared) for s in specs}
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


def _zero_shot_rows(
    config: RunConfig, backbone: Backbone, data: dict[str, Dataset], process: ProcessInfo
) -> list[dict[str, Any]]:
    """The template and label words with no prompt, for every task that has label words."""
    rows: list[dict[str, Any]] = []
    if not config.baseline:  # before building: a slot template cannot run with no prompt
        return rows
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
    specs: list[RunTask],
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
    backbone = load_backbone(
        config.backbone,
        dtype=config.backbone_dtype,
        quantize=config.backbone_quantize,
        device=device,
        adapter=config.backbone_adapter,
    )
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
