"""`softprompt compare`: every way to adapt one frozen backbone to one task, side by side.

The articles this project implements compare prompt learning with head-only probes,
LoRA and full fine-tuning on accuracy, trainable parameters, storage per task and
compute. Here that comparison is one grid of units, methods x seeds, all at the same
step budget, on any task the project trains (classification, tagging, generation,
images, a user's files). There is no branch per task kind: a unit is built through the
unit kinds below (zero-shot, head-only, LoRA, full) or the method registry, trained by
the one training loop, and scored by the one `evaluate`. A unit a task cannot have
(zero-shot with a head still to learn, head-only where there is no head) is listed
as n/a with the reason the model gave. A unit whose training diverges (the train guard
stops it) is recorded as diverged, with the step and the reason, and the grid goes on:
at a shared budget that is the method's result, and one unit must not end the table.

Under `--shots K` a seed is also a data seed: each seed trains on its own K-shot sample
(drawn once per seed), since few-shot results vary more with the sample than with the
initialization; the test rows are the same for every unit.

A seed is the training seed (data order); the prompt's initialization is the method's
own `seed` option (0 unless the run sets it), the same for every unit. `--seed-init`
makes the unit's seed seed its model too: `method.seed` for a method that has one, and
torch's RNG while the model is built (LoRA's random A matrices), so a unit's init
depends on its seed alone, not on which units ran before it in the process.

Each unit is a normal run folder, OUT/units/<method>-s<seed>/ (prompt.safetensors,
metrics.jsonl), so a user can `eval`, `predict` or `serve` it. When a unit ends its row
is written to OUT/units/<unit>/unit.json and its resume checkpoint is deleted (a full
fine-tuning unit's is 3x the backbone); running the compare again reads
finished units back, resumes a unit that was stopped from its checkpoint (train's own
resume), and trains the rest. OUT/compare.md, compare.json and compare.png are
rewritten from the rows once every unit is done. `train --compare lora,full` runs its
baselines as the same units (`baseline_rows`: the run's seed, folders OUT/<kind>/), so
a run's report and a compare table come from one code path. The table itself is
recipes/compare_table.py. The units' learning rates, and `--lr-grid`, which chooses
each method's lr on validation with extra first-seed units (OUT/units/<method>-s0-lr<lr>),
are recipes/compare_lr.py; how each unit kind is built and read back, compare_units.py.

Peak memory is measured per unit from just before its model is built to the end of
its test scoring (an lr-grid unit scored once chosen: the larger of its training's and
its scoring's): on CUDA, torch's peak allocated bytes; on CPU, the highest resident
set size (RSS, read from /proc every 20 ms) above the RSS at the unit's start. Python's
tracemalloc is not used: it does not see torch's tensor memory.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from softprompt.backbones import Backbone, load_backbone, place
from softprompt.config import RunConfig
from softprompt.data import Dataset, Example
from softprompt.device import resolve_device
from softprompt.errors import ConfigError, TrainingDiverged
from softprompt.evaluate import evaluate
from softprompt.files import atomic_write_text
from softprompt.methods import available_methods
from softprompt.model import PromptModel
from softprompt.recipes import compare_lr
from softprompt.recipes.baselines import load_model
from softprompt.recipes.compare_lr import Unit
from softprompt.recipes.compare_table import (
    HEAD_ONLY,
    SECONDARY,
    ZERO_SHOT,
    CompareReport,
    headline,
    summarize,
    write_report,
)
from softprompt.recipes.compare_units import (
    UNIT_KINDS,
    NotApplicable,
    has_seed,
    read_back,
    registered,
    sample_test_rows,
    seeded,
)
from softprompt.recipes.compare_units import recorded as units_recorded
from softprompt.recipes.loading import load_data
from softprompt.recipes.peak_memory import PeakMemory
from softprompt.train import run_dir, train
from softprompt.train.loop import CHECKPOINT_FILE

DEFAULT_METHODS = (ZERO_SHOT, HEAD_ONLY, "soft-prompt", "prefix-tuning", "p-tuning", "lora", "full")
UNIT_FILE = "unit.json"


@dataclass
class CompareConfig:
    """`run` gives the backbone, data, framing and training budget every unit shares;
    `methods` x `seeds` is the grid; `test_limit` scores a fixed seeded sample of that
    many test rows (0: all of them); `seed_init`: each unit's seed also seeds its model's
    initialization (see the module docstring), not only its data order.

    Learning rate (`lr_of`, recipes/compare_lr.py): `lr_for` names a method's own;
    otherwise, with `per_method_lr` (`softprompt compare` without --lr), each method
    trains at the lr it recommends (`recommended_lr`), and else, or when it names none,
    at run.train.lr: one lr for every method lets some collapse while others are still
    slow (issue 22). A task head beside other trainable parameters trains at `head_lr_of`."""

    run: RunConfig
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    test_limit: int = 0
    seed_init: bool = False
    per_method_lr: bool = False
    lr_for: dict[str, float] = field(default_factory=dict)
    lr_grid: list[float] = field(default_factory=list)  # factors of lr_of (compare_lr.py)

    def __post_init__(self) -> None:
        known = [*UNIT_KINDS, *available_methods()]
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ConfigError(
                f"--methods: unknown {', '.join(map(repr, unknown))}; use any of {', '.join(known)}"
            )
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ConfigError("--methods: name each method once, at least one")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError("--seeds: give distinct seeds >= 0, at least one (e.g. 0,1,2)")
        if self.test_limit < 0:
            raise ConfigError(f"--test-limit: must be >= 0 (0 = all rows), got {self.test_limit}")
        compare_lr.check_lr_for(self.lr_for, known)
        compare_lr.check_lr_grid(self.lr_grid)
        gridded = {m: self.lr_of(m) for m in self.methods if self.gridded(m)}
        compare_lr.check_grid_lrs(self.lr_grid, gridded)
        if self.run.tasks or self.run.compare:
            raise ConfigError(
                "compare: one task at a time, without `compare:`/`tasks:` in the run config; "
                "name baselines with --methods (e.g. --methods soft-prompt,lora,full)"
            )

    def lr_of(self, method: str) -> float:
        """The lr `method`'s units train at (see the class docstring)."""
        return compare_lr.lr_of(
            method, lr_for=self.lr_for, per_method=self.per_method_lr, shared=self.run.train.lr
        )

    def head_lr_of(self, method: str, *, has_head: bool) -> float | None:
        """The lr of `method`'s task head when it has one beside other parameters
        (None: the unit's lr): --head-lr, else head-only's lr under per-method lrs."""
        return compare_lr.head_lr_of(
            method,
            has_head=has_head,
            given=self.run.train.head_lr,
            per_method=self.per_method_lr,
            head_only=self.lr_of(HEAD_ONLY),
        )

    def units(self) -> list[Unit]:
        """The grid in order, without an lr grid's extra units; zero-shot trains nothing,
        so it runs once (the first seed)."""
        return [
            Unit(method, seed)
            for method in self.methods
            for seed in (self.seeds[:1] if method == ZERO_SHOT else self.seeds)
        ]

    def gridded(self, method: str) -> bool:
        """Whether `method`'s lr is chosen by --lr-grid (zero-shot trains nothing)."""
        return bool(self.lr_grid) and method != ZERO_SHOT

    def unit_count(self) -> int:
        """Units to run, an lr grid's included (the progress bar's total)."""
        extra = len(self.lr_grid) - 1
        return len(self.units()) + sum(extra for m in self.methods if self.gridded(m))


@dataclass
class _Context:
    backbone: Backbone
    dataset: Dataset
    config: CompareConfig
    test: list[Example]
    out: Path
    progress: bool = False  # each unit's own train / test bars under the compare's bar
    samples: dict[int, Dataset] = field(default_factory=dict)  # data seed -> k-shot data
    layout: str = "units"  # "units": OUT/units/<method>-s<seed>; "flat": OUT/<method>
    heads: dict[str, bool] = field(default_factory=dict)  # run.task -> it trains a head

    def has_head(self) -> bool:
        """Whether the compare's task trains a head of its own (found once)."""
        key = json.dumps(self.config.run.task, sort_keys=True, default=str)
        if key not in self.heads:
            task = self.config.run.task
            self.heads[key] = compare_lr.task_has_head(self.backbone, self.dataset, task)
        return self.heads[key]

    def folder(self, unit: Unit) -> Path:
        """Where a unit's run folder lives (a compare's grid, or a run's own baselines)."""
        return self.out / unit.method if self.layout == "flat" else self.out / "units" / unit.name

    def for_unit(self, run: RunConfig) -> _Context:
        """The context a unit trains in: under --shots its own K-shot sample (the unit's
        data seed), drawn once per seed; the test rows stay the same for every unit."""
        if run.data.shots is None:
            return self
        seed = run.data.seed
        if seed not in self.samples:
            self.samples[seed] = load_data(run.data)
        return dataclasses.replace(self, dataset=self.samples[seed])


def compare(
    config: CompareConfig,
    *,
    progress: bool = True,
    stop_at: tuple[int, int] | None = None,
) -> CompareReport:
    """Run (or go on with) the grid and write OUT/compare.{md,json,png}.

    `stop_at=(units, steps)` is for tests: once `units` units have finished in this call,
    the next unit that trains stops after `steps` steps, as if the process were killed,
    and the compare returns incomplete without writing the tables."""
    out = Path(config.run.out)
    run_dir.check_out_dir(out, dataclasses.replace(config.run.train, overwrite=False), resume=False)
    with run_dir.lock(out):
        dataset = load_data(config.run.data)  # first: a bad data file fails before the model
        device = resolve_device(config.run.train.device)
        run = config.run
        backbone = load_backbone(
            run.backbone,
            dtype=run.backbone_dtype,
            quantize=run.backbone_quantize,
            device=device,
            adapter=run.backbone_adapter,
            device_map=run.backbone_device_map,
        )
        place(backbone.model, device)
        by_input = dataset.task == "generation"
        test = sample_test_rows(dataset.test, config.test_limit, by_input=by_input)
        ctx = _Context(backbone, dataset, config, test, out, progress)
        rows: list[dict[str, Any]] = []
        grids: dict[str, dict[str, Any]] = {}
        with tqdm(total=config.unit_count(), desc="compare", disable=not progress) as bar:
            finished = 0

            def run_one(unit: Unit, score: bool) -> dict[str, Any] | None:
                nonlocal finished
                bar.set_postfix_str(unit.name)
                stop = stop_at[1] if stop_at and finished >= stop_at[0] else None
                row = run_unit(ctx, unit, device, stop_after=stop, score=score)
                finished += row is not None
                bar.update(row is not None)
                return row

            def score_one(unit: Unit, row: dict[str, Any]) -> dict[str, Any]:
                return score_unit(ctx, unit, row, device)

            for method in config.methods:
                grid = _method_rows(config, method, run_one, score_one, rows)
                if grid is None:
                    return _report(rows, config, out, device, grids, complete=False)
                grids.update({method: grid} if grid else {})
        report = _report(rows, config, out, device, grids)
        write_report(report, _config_record(config, ctx.has_head()))
        return report


def _method_rows(
    config: CompareConfig,
    method: str,
    run_one: compare_lr.RunOne,
    score_one: compare_lr.ScoreOne,
    rows: list[dict[str, Any]],
) -> dict[str, Any] | None:
    """Append one method's rows (every seed) to `rows` as they finish; returns its lr
    grid's record ({} without one), None when a unit stopped early."""
    if config.gridded(method):
        base, factors = config.lr_of(method), config.lr_grid
        return compare_lr.grid_rows(method, config.seeds, factors, base, run_one, score_one, rows)
    seeds = [u.seed for u in config.units() if u.method == method]
    return {} if compare_lr.run_rest(method, seeds, None, run_one, rows) else None


BASELINE_LABELS = {"lora": "LoRA r=8 on q,v (PEFT)", "full": "full fine-tuning"}


def baseline_rows(
    run: RunConfig,
    backbone: Backbone,
    dataset: Dataset,
    device: torch.device,
    *,
    task: str,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """`train --compare lora,full`: the run's own baselines as compare units at the run's
    seed, in OUT/<kind>/ (resumed or read back like any unit), scored on the run's test
    rows; one report row each."""
    if not run.compare:
        return []
    shared = dataclasses.replace(run, compare=[], tasks=None)
    config = CompareConfig(shared, methods=list(run.compare), seeds=[run.train.seed])
    ctx = _Context(backbone, dataset, config, list(dataset.test), Path(run.out), progress)
    ctx = dataclasses.replace(ctx, layout="flat")
    rows = [run_unit(ctx, unit, device) for unit in config.units()]
    for row in rows:  # a run's own baseline that diverged stops the run, as before
        if row is not None and "failed" in row:
            raise TrainingDiverged(row["failed"])
    return [_report_row(task, row) for row in rows if row is not None]


def _report_row(task: str, unit: dict[str, Any]) -> dict[str, Any]:
    """A finished unit as a row of a run's report (recipes/report.py)."""
    kept = {k: v for k, v in unit.items() if k not in ("method", "seed", "config", "prompt")}
    name = f"{BASELINE_LABELS[unit['method']]} (best of step {unit['best_step']})"
    return {"task": task, "name": name, **kept}


def _config_record(config: CompareConfig, has_head: bool) -> dict[str, Any]:
    """The grid as compare.json records it (`head_lr`: the methods whose head had one)."""
    heads = {m: config.head_lr_of(m, has_head=has_head) for m in config.methods}
    heads = {m: lr for m, lr in heads.items() if lr is not None}
    return {
        "run": config.run.to_dict(),
        "methods": config.methods,
        "seeds": config.seeds,
        "test_limit": config.test_limit,
        "seed_init": config.seed_init,
        "lr": {m: config.lr_of(m) for m in config.methods},
        **({"lr_grid": config.lr_grid} if config.lr_grid else {}),
        **({"head_lr": heads} if heads else {}),
    }


def unit_config(
    config: CompareConfig, unit: Unit, folder: Path, *, has_head: bool = False
) -> RunConfig:
    """The run a unit is: the compare's run with this unit's method, seed, lr (and head
    lr, when `has_head`: the task trains a head) and folder (its prompt file and run.json
    record them, so `eval` and a resume see them)."""
    run = config.run
    method = run.method if run.method.get("name") == unit.method else {"name": unit.method}
    if config.seed_init and has_seed(unit.method):
        method = {**method, "seed": unit.seed}
    lr = config.lr_of(unit.method) if unit.lr is None else unit.lr
    head_lr = config.head_lr_of(unit.method, has_head=has_head)
    train_config = dataclasses.replace(
        run.train, seed=unit.seed, lr=lr, head_lr=head_lr, overwrite=False
    )
    data = run.data
    if data.shots is not None:  # few-shot results vary most with the sample: one per seed
        data = dataclasses.replace(data, seed=data.seed + unit.seed)
    return dataclasses.replace(run, method=method, train=train_config, data=data, out=str(folder))


def run_unit(
    ctx: _Context,
    unit: Unit,
    device: torch.device,
    *,
    stop_after: int | None = None,
    score: bool = True,
) -> dict[str, Any] | None:
    """One unit's row: read back when finished, else trained (resumed from its checkpoint
    if one was stopped) and, with `score`, scored on the test rows (an lr grid's units
    are scored only once chosen: `score_unit`). None when `stop_after` stopped it early."""
    folder = ctx.folder(unit)
    run = unit_config(ctx.config, unit, folder, has_head=ctx.has_head())
    ctx = ctx.for_unit(run)
    recorded = units_recorded(run, test_limit=ctx.config.test_limit, seed_init=ctx.config.seed_init)
    done = folder / UNIT_FILE
    if done.is_file() and not ctx.config.run.train.overwrite:
        row = read_back(done, recorded)
        return score_unit(ctx, unit, row, device) if score else row
    row: dict[str, Any] = {"method": unit.method, "seed": unit.seed, "config": recorded}
    with PeakMemory(device) as memory:
        try:
            with seeded(unit.seed if ctx.config.seed_init else None):
                build = UNIT_KINDS.get(unit.method, registered(unit.method))
                model = build(ctx.backbone, ctx.dataset, run)
        except NotApplicable as exc:
            row["skipped"] = " ".join(str(exc).split())
            return _finish(done, row)
        try:
            trained = _fit(ctx, model, run, folder, stop_after)
        except TrainingDiverged as exc:  # read back on a rerun like any finished unit
            row["failed"] = " ".join(str(exc).split())
            return _finish(done, row)
        if trained is None:
            return None
        model, path, seconds, best_step, validation = trained
        row.update(
            trainable_parameters=model.num_trainable(),
            file_bytes=path.stat().st_size,
            train_seconds=seconds,
            best_step=best_step,
            **({"validation_metric": validation} if validation is not None else {}),
            prompt=str(path),
        )
        if score:
            row.update(_test_scores(ctx, model, run))
    row["peak_memory_bytes"] = memory.used
    return _finish(done, row)


def _finish(done: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Record a finished unit, then drop its resume checkpoint: a finished unit is read
    back from unit.json and its best file, never resumed, and a full fine-tuning unit's
    checkpoint (its weights and two Adam moments) is 3x the backbone."""
    atomic_write_text(done, json.dumps(row, indent=2))
    (done.parent / CHECKPOINT_FILE).unlink(missing_ok=True)
    return row


def score_unit(
    ctx: _Context, unit: Unit, row: dict[str, Any], device: torch.device
) -> dict[str, Any]:
    """A trained unit's row with its test scores: as it is when it has them (or is n/a
    or diverged), else its best model loaded back and scored, and unit.json rewritten;
    its peak memory is the larger of training's and scoring's."""
    if "test_rows" in row or "skipped" in row or "failed" in row:
        return row
    run = unit_config(ctx.config, unit, ctx.folder(unit), has_head=ctx.has_head())
    with PeakMemory(device) as memory:
        model = load_model(row["prompt"], ctx.backbone)
        row = {**row, **_test_scores(ctx, model, run)}
    row["peak_memory_bytes"] = max(row.get("peak_memory_bytes", 0), memory.used)
    atomic_write_text(ctx.folder(unit) / UNIT_FILE, json.dumps(row, indent=2))
    return row


def _test_scores(ctx: _Context, model: PromptModel, run: RunConfig) -> dict[str, Any]:
    """The unit's test scores, the rows scored and the seconds it took."""
    tick = time.perf_counter()
    scores = evaluate(
        model,
        ctx.test,
        batch_size=run.train.eval_batch_size,
        progress=ctx.progress,
        decode=True,  # generation: BLEU, ROUGE-L and exact match of greedy outputs
    )
    return {**scores, "test_rows": len(ctx.test), "test_seconds": time.perf_counter() - tick}


def _fit(
    ctx: _Context, model: PromptModel, run: RunConfig, folder: Path, stop_after: int | None
) -> tuple[PromptModel, Path, float, int, float | None] | None:
    """Train the unit's model into its folder (or save it untrained when nothing trains);
    returns the best model loaded back, its file, training seconds, best step and best
    validation figure (None when nothing trains)."""
    meta = {"run": run.to_dict()}
    if not model.num_trainable():  # zero-shot: its file still serves, evals and predicts
        path = model.save(folder / "prompt.safetensors", **meta, dataset=ctx.dataset.name)
        return model, path, 0.0, 0, None
    resume = (folder / run_dir.CHECKPOINT).is_file() and not ctx.config.run.train.overwrite
    train_config = dataclasses.replace(run.train, overwrite=not resume)
    result = train(
        model,
        ctx.dataset,
        train_config,
        folder,
        resume=resume,
        meta=meta,
        progress=ctx.progress,
        stop_after=stop_after,
    )
    if result.steps_done < train_config.steps and stop_after is not None:
        return None
    loaded = type(model).load(result.prompt_path, ctx.backbone)
    return loaded, result.prompt_path, result.seconds, result.best_step, result.best_metric


def _report(
    rows: list[dict[str, Any]],
    config: CompareConfig,
    out: Path,
    device: torch.device,
    grids: dict[str, dict[str, Any]] | None = None,
    *,
    complete: bool = True,
) -> CompareReport:
    metric = headline(rows)
    also = [m for m in SECONDARY if m != metric and any(m in r for r in rows)]
    summary = [
        summarize(m, [r for r in rows if r["method"] == m], metric, also) for m in config.methods
    ]
    return CompareReport(
        rows=rows,
        summary=[s for s in summary if s is not None],
        metric=metric,
        memory=PeakMemory.describe(device),
        out=out,
        complete=complete,
        also=also,
        grid=grids or {},
    )
