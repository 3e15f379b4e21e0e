"""`softprompt train` as one call: train prompts for one task or several, then score
zero-shot, the baselines and the tuned prompts on each test split; write a report.

from softprompt.recipes.run import run
report = run(RunConfig())                       # train + report

Order matters to a user waiting on it: every check that can refuse the run (template
slots, `--compare`, `--resume` against the checkpoint) comes before any scoring or
training; the zero-shot row is scored once per (backbone, test rows, template, label
words) and kept in OUT/zero-shot.json, so a resumed or interrupted run does not pay
for it again; `eval.test_limit` bounds every test pass to a fixed sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from softprompt import distributed
from softprompt.backbones import Backbone, load_backbone, place
from softprompt.config import RunConfig, RunTask
from softprompt.data import Dataset, Example
from softprompt.device import resolve_device
from softprompt.distributed import ProcessInfo
from softprompt.errors import ConfigError
from softprompt.evaluate import evaluate
from softprompt.files import atomic_write_text
from softprompt.methods import method_config_class
from softprompt.model import MultiTaskModel, PromptModel, build_model
from softprompt.plot import plot_curves
from softprompt.recipes.baselines import head_only_baseline
from softprompt.recipes.compare import baseline_rows
from softprompt.recipes.loading import load_data
from softprompt.recipes.report import RunReport, class_report, collapse_warnings
from softprompt.tasks.template import VIRTUAL, Template
from softprompt.train import TrainResult, run_dir, train
from softprompt.train.checkpoint import checkpoint_config

ZERO_SHOT_FILE = "zero-shot.json"
ZERO_SHOT_NAME = "zero-shot (template + label words)"
SAMPLE = "a seeded class-stratified sample"  # how eval.test_limit picks its rows


def sample_rows(
    rows: list[Example], limit: int, *, stratify: bool = True, seed: int = 0
) -> list[Example]:
    """At most `limit` rows, in their original order: each class keeps its share (largest
    remainder), drawn with a fixed seed, so a test file sorted by label still gives every
    class and the same limit always scores the same rows. `stratify=False` (generation,
    tagging: no classes) draws uniformly. All rows when `limit` is 0 or covers them."""
    if not limit or limit >= len(rows):
        return list(rows)
    rng = random.Random(seed)
    if not stratify:
        return [rows[i] for i in sorted(rng.sample(range(len(rows)), limit))]
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.label, []).append(i)
    shares = {label: limit * len(idx) / len(rows) for label, idx in groups.items()}
    quota = {label: int(share) for label, share in shares.items()}
    by_remainder = sorted(groups, key=lambda label: quota[label] - shares[label])
    for label in by_remainder[: limit - sum(quota.values())]:
        quota[label] += 1
    keep = [i for label, idx in groups.items() for i in rng.sample(idx, quota[label])]
    return [rows[i] for i in sorted(keep)]


def limit_test(dataset: Dataset, limit: int) -> Dataset:
    """The dataset with its test split bounded by `eval.test_limit` (train and validation
    untouched, so training and the resume checks see the same rows)."""
    stratify = dataset.task == "classification"
    return dataclasses.replace(dataset, test=sample_rows(dataset.test, limit, stratify=stratify))


def build_models(
    backbone: Backbone, specs: list[RunTask], data: dict[str, Dataset]
) -> MultiTaskModel:
    """One (method, task) per spec on one backbone; methods may share modules."""
    shared: dict[str, Any] = {}
    return MultiTaskModel(
        {s.name: build_model(backbone, data[s.name], s.method, s.task, shared) for s in specs}
    )


# -- checks before any model work ---------------------------------------------------


def check_template_slots(specs: list[RunTask]) -> None:
    """A template's {p:N} slots must hold the method's n_tokens: known from the config
    alone, so refused before the data or the backbone loads."""
    for spec in specs:
        template = spec.task.get("template")
        if not isinstance(template, str) or not Template(template).has_slots:
            continue
        options = {k: v for k, v in spec.method.items() if k != "name"}
        try:
            method_config = method_config_class(spec.method["name"])(**options)
        except (ConfigError, TypeError):  # a bad option: the model build names it
            continue
        n_tokens = getattr(method_config, "n_tokens", None)
        need = Template(template).n_virtual
        if n_tokens is not None and n_tokens != need:
            where = f"tasks.{spec.name}." if len(specs) > 1 else ""
            raise ConfigError(
                f"{where}task.template: its slots hold {need} virtual tokens but "
                f"{where}method.n_tokens is {n_tokens}; set --n-tokens {need} or change the slots"
            )


def check_compare(config: RunConfig, specs: list[RunTask]) -> None:
    """`--compare` (LoRA, full fine-tuning rows) trains the run's one task again with the
    backbone tuned: refused for a multitask run, before anything is scored."""
    if config.compare and len(specs) != 1:
        raise ConfigError(
            "compare: LoRA / full fine-tuning rows are for a run with one task; run "
            "`softprompt compare` per task, or drop --compare"
        )


def check_resume(
    config: RunConfig, model: MultiTaskModel, data: dict[str, Dataset], out: Path
) -> None:
    """The checkpoint's recorded config against this run's, as the training loop will
    check it, but before the zero-shot row and the baselines spend minutes."""
    path = out / run_dir.CHECKPOINT
    if not path.is_file():
        return
    current = run_dir.combined_resumable(
        {
            name: run_dir.resumable_config(
                config.train,
                task_model.describe(),
                data[name].name,
                data[name].train,
                validation=data[name].validation,
            )
            for name, task_model in model.models.items()
        }
    )
    run_dir.check_resume(path, checkpoint_config(path), current, config.train)


# -- report rows ---------------------------------------------------------------------


def _test_row(
    name: str,
    model: PromptModel,
    dataset: Dataset,
    batch_size: int,
    process: ProcessInfo,
    **extra: Any,
) -> dict[str, Any]:
    per_row = dataset.task == "classification" and process.world == 1  # rows for the matrix
    scores = evaluate(
        model,
        dataset.test,
        batch_size=batch_size,
        process=process,
        progress=True,
        keep_scores=per_row,
        decode=True,  # generation: BLEU / ROUGE-L / exact match of greedy outputs
    )
    row_scores = scores.pop("scores", None)
    row = {"name": name, **scores, "trainable_parameters": model.num_trainable(), **extra}
    if row_scores is not None:
        labels = model.task.config.labels
        predicted = [labels[max(range(len(s)), key=s.__getitem__)] for s in row_scores]
        row["classes"] = class_report(labels, [e.label for e in dataset.test], predicted)
    return row


def zero_shot_template(task: dict[str, Any]) -> dict[str, Any]:
    """The task with its template's {p:N} slots taken out: with no prompt there is nothing
    to fill them, and the template's own words are what zero-shot means."""
    template = task.get("template")
    if not isinstance(template, str) or not VIRTUAL.search(template):
        return task
    text = re.sub(r"[ \t]{2,}", " ", VIRTUAL.sub("", template))
    return {**task, "template": "\n".join(line.strip(" \t") for line in text.split("\n"))}


def zero_shot_key(model: PromptModel, dataset: Dataset) -> str:
    """What a zero-shot score depends on: the backbone (fingerprint, dtype, quantization),
    the task's framing (template, label words, head) and the test rows scored."""
    facts = {
        "backbone": model.backbone.describe(),
        "task": model.describe()["task"],
        "dataset": dataset.name,
        "test_rows": run_dir.data_fingerprint(dataset.test),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def _read_zero_shot(out: Path) -> dict[str, Any]:
    try:
        kept = json.loads((out / ZERO_SHOT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: score again and rewrite it
        return {}
    return kept if isinstance(kept, dict) else {}


def _zero_shot_rows(
    config: RunConfig,
    backbone: Backbone,
    data: dict[str, Dataset],
    process: ProcessInfo,
    out: Path,
    notes: list[str],
) -> list[dict[str, Any]]:
    """The template (without slots) with no prompt, for every task that can answer
    untrained (label words, or generation: the template's own greedy text, scored by
    BLEU and ROUGE-L); each score kept in OUT/zero-shot.json by `zero_shot_key` as soon
    as it is computed, and read back instead of scored again. A task without label
    words (a linear head) gets a line in `notes` saying why it has no zero-shot row."""
    rows: list[dict[str, Any]] = []
    if not config.baseline:
        return rows
    kept = _read_zero_shot(out)
    for spec in config.task_specs():
        task = zero_shot_template(spec.task)
        zero_shot = build_model(backbone, data[spec.name], {"name": "none"}, task)
        if not zero_shot.task.generates and not zero_shot.task.label_token_ids():
            notes.append(no_zero_shot_note(spec.name, len(config.task_specs()) > 1))
            continue
        key = zero_shot_key(zero_shot, data[spec.name])
        if key not in kept:
            kept[key] = _test_row(
                _zero_shot_name(zero_shot, sloted=task is not spec.task),
                zero_shot,
                data[spec.name],
                config.train.eval_batch_size,
                process,
                file_bytes=0,
                train_seconds=0.0,
                template=task.get("template", zero_shot.task.config.template),
            )
            if process.main:
                atomic_write_text(out / ZERO_SHOT_FILE, json.dumps(kept, indent=2))
        rows.append({"task": spec.name, **kept[key]})
    return rows


def _zero_shot_name(model: PromptModel, *, sloted: bool) -> str:
    """The report's zero-shot row: label words for classes, the template alone for text."""
    name = "zero-shot (template only)" if model.task.generates else ZERO_SHOT_NAME
    return f"{name[:-1]}, no slots)" if sloted else name


def no_zero_shot_note(task: str, several: bool) -> str:
    """Why a report has no zero-shot row for `task`: said, so its absence is not a mystery."""
    where = f" for {task}" if several else ""
    return (
        f"no zero-shot row{where}: the task scores classes with a trained linear head "
        "(no label words), so an untrained prompt has nothing to predict with"
    )


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


def curves_title(config: RunConfig) -> str:
    """What curves.png is of: the method(s), the data and the backbone."""
    specs = config.task_specs()
    if len(specs) == 1:
        what = f"{specs[0].method['name']} on {Path(str(specs[0].data.source)).name}"
    else:
        what = "multi-task: " + ", ".join(s.name for s in specs)
    return f"{what} ({Path(str(config.backbone)).name})"


def _zero_shot_accuracy(rows: list[dict[str, Any]], several: bool) -> dict[str, float]:
    """Each task's zero-shot accuracy, keyed as the curves key tasks ("" for one task)."""
    return {
        (r["task"] if several else ""): r["accuracy"]
        for r in rows
        if r["name"].startswith(ZERO_SHOT_NAME[:9]) and "accuracy" in r
    }


def test_note(full: dict[str, int], data: dict[str, Dataset]) -> str:
    """One line under the report's table when eval.test_limit cut a test split."""
    cut = [name for name, dataset in data.items() if len(dataset.test) < full[name]]
    if not cut:
        return ""
    parts = ", ".join(
        f"{name}: {len(data[name].test):,} of {full[name]:,}"
        if len(data) > 1
        else f"{len(data[name].test):,} of {full[name]:,}"
        for name in cut
    )
    return f"test rows scored (eval.test_limit, {SAMPLE}): {parts}\n"


def _tuned_rows(
    config: RunConfig,
    backbone: Backbone,
    specs: list[RunTask],
    data: dict[str, Dataset],
    process: ProcessInfo,
    result: TrainResult,
) -> list[dict[str, Any]]:
    """Each task's best saved prompt, loaded back from its file (what a user would serve)
    and scored on the test split."""
    rows = []
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
    return rows


def _write_reports(report: RunReport, loaded: dict[str, Dataset], data: dict[str, Dataset]) -> None:
    """OUT/report.md for people and OUT/report.json for tools; both say how many test
    rows were scored of how many, so a sampled score is never read as a full one."""
    full = {name: len(d.test) for name, d in loaded.items()}
    tests = {name: {"scored": len(d.test), "rows": full[name]} for name, d in data.items()}
    sample = SAMPLE if any(t["scored"] < t["rows"] for t in tests.values()) else "every row"
    markdown = report.markdown() + test_note(full, data) + report.details()
    atomic_write_text(report.out_dir / "report.md", markdown)
    summary = {
        "rows": report.rows,
        "test": {"sample": sample, **tests},
        "notes": report.notes + collapse_warnings(report.rows),
        "date": report.date,
        "config": report.config,
    }
    atomic_write_text(report.out_dir / "report.json", json.dumps(summary, indent=2))


@run_dir.claims_out_dir(
    lambda bound: (bound.arguments["config"].out, bound.arguments["config"].train)
)
def run(config: RunConfig, *, resume: bool = False, progress: bool = True) -> RunReport:
    """Train prompts for one task or several, then score zero-shot and tuned on each test
    split; write a report. The output folder is checked and locked before anything loads."""
    specs = config.task_specs()
    check_template_slots(specs)
    check_compare(config, specs)
    device = distributed.local_device(resolve_device(config.train.device))
    process = distributed.setup(device)  # under torchrun each process scores a test share
    # first: a bad data file fails before the model loads
    loaded = {s.name: load_data(s.data) for s in specs}
    data = {name: limit_test(d, config.eval.test_limit) for name, d in loaded.items()}
    backbone = load_backbone(
        config.backbone,
        dtype=config.backbone_dtype,
        quantize=config.backbone_quantize,
        device=device,
        adapter=config.backbone_adapter,
        device_map=config.backbone_device_map,
    )
    place(backbone.model, device)
    out_dir = Path(config.out)
    model = build_models(backbone, specs, data)
    if resume:
        check_resume(config, model, data, out_dir)
    if process.main:  # what `--resume` alone reads back (run_dir.stored_settings)
        run_dir.save_settings(out_dir, config.to_dict())
    notes: list[str] = []
    rows = _zero_shot_rows(config, backbone, data, process, out_dir, notes)
    rows += _head_only_rows(config, backbone, specs, data, process, resume, progress)
    only = specs[0].name  # check_compare: --compare runs have one task
    rows += baseline_rows(config, backbone, data[only], device, task=only, progress=progress)
    result = train(
        model,
        data,
        config.train,
        out_dir,
        resume=resume,
        meta={"run": config.to_dict()},
        progress=progress,
    )
    rows += _tuned_rows(config, backbone, specs, data, process, result)
    rows.sort(key=lambda r: [s.name for s in specs].index(r["task"]))
    if process.main:  # the loop drew the curves without knowing the score to beat
        plot_curves(
            result.history,
            out_dir / "curves.png",
            title=curves_title(config),
            zero_shot=_zero_shot_accuracy(rows, len(specs) > 1),
        )
    date = datetime.now(UTC).isoformat(timespec="seconds")
    report = RunReport(
        rows=rows, result=result, out_dir=out_dir, config=config.to_dict(), date=date, notes=notes
    )
    if process.main:
        _write_reports(report, loaded, data)
    return report
