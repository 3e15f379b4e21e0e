"""`softprompt compare`: every way to adapt one frozen backbone to one task, side by side.

The articles this project implements compare prompt learning with head-only probes,
LoRA and full fine-tuning on accuracy, trainable parameters, storage per task and
compute. Here that comparison is one grid of units, methods x seeds, all at the same
step budget, on any task the project trains (classification, tagging, generation,
images, a user's files). There is no branch per task kind: a unit is built through the
unit kinds below (zero-shot, head-only, LoRA, full) or the method registry, trained by
the one training loop, and scored by the one `evaluate`. A unit a task cannot have
(zero-shot with a head still to learn, head-only where there is no head) is listed
as n/a with the reason the model gave.

Under `--shots K` a seed is also a data seed: each seed trains on its own K-shot sample
(drawn once per seed), since few-shot results vary more with the sample than with the
initialization; the test rows are the same for every unit.

Each unit is a normal run folder, OUT/units/<method>-s<seed>/ (prompt.safetensors,
metrics.jsonl, checkpoint), so a user can `eval`, `predict` or `serve` it. When a unit
ends its row is written to OUT/units/<unit>/unit.json; running the compare again reads
finished units back, resumes a unit that was stopped from its checkpoint (train's own
resume), and trains the rest. OUT/compare.md, compare.json and compare.png are
rewritten from the rows once every unit is done.

Peak memory is measured per unit from just before its model is built to the end of
its test scoring: on CUDA, torch's peak allocated bytes; on CPU, the highest resident
set size (RSS, read from /proc every 20 ms) above the RSS at the unit's start. Python's
tracemalloc is not used: it does not see torch's tensor memory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from softprompt.backbones import Backbone, load_backbone, place
from softprompt.config import RunConfig
from softprompt.data import Dataset, Example
from softprompt.device import resolve_device
from softprompt.errors import ConfigError
from softprompt.evaluate import evaluate
from softprompt.files import atomic_write_bytes, atomic_write_text
from softprompt.methods import available_methods
from softprompt.model import PromptModel, build_model
from softprompt.recipes.baselines import TuneConfig, TunedModel
from softprompt.recipes.report import METRIC_TITLES, metric_cell
from softprompt.recipes.run import load_data
from softprompt.tasks.presets import task_config_for
from softprompt.train import run_dir, train

ZERO_SHOT, HEAD_ONLY = "zero-shot", "head-only"
SECONDARY = ("rouge_l", "exact_match")  # generation: shown beside the headline BLEU
DEFAULT_METHODS = (ZERO_SHOT, HEAD_ONLY, "soft-prompt", "prefix-tuning", "p-tuning", "lora", "full")
UNIT_FILE = "unit.json"
LABELS = {
    ZERO_SHOT: "zero-shot (no training)",
    HEAD_ONLY: "head-only (linear probe)",
    "lora": "LoRA (PEFT, r=8)",
    "full": "full fine-tuning",
}


class NotApplicable(Exception):
    """A unit this task cannot have; its message is the reason shown in the table."""


@dataclass
class CompareConfig:
    """`run` gives the backbone, data, framing and training budget every unit shares;
    `methods` x `seeds` is the grid; `test_limit` scores a fixed seeded sample of that
    many test rows (0: all of them)."""

    run: RunConfig
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    test_limit: int = 0

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
        if self.run.tasks or self.run.compare:
            raise ConfigError(
                "compare: one task at a time, without `compare:`/`tasks:` in the run config; "
                "name baselines with --methods (e.g. --methods soft-prompt,lora,full)"
            )

    def units(self) -> list[Unit]:
        """The grid in order; zero-shot trains nothing, so it runs once (the first seed)."""
        return [
            Unit(method, seed)
            for method in self.methods
            for seed in (self.seeds[:1] if method == ZERO_SHOT else self.seeds)
        ]


@dataclass(frozen=True)
class Unit:
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-s{self.seed}"


@dataclass
class _Context:
    backbone: Backbone
    dataset: Dataset
    config: CompareConfig
    test: list[Example]
    out: Path
    progress: bool = False  # each unit's own train / test bars under the compare's bar
    samples: dict[int, Dataset] = field(default_factory=dict)  # data seed -> k-shot data

    def for_unit(self, run: RunConfig) -> _Context:
        """The context a unit trains in: under --shots its own K-shot sample (the unit's
        data seed), drawn once per seed; the test rows stay the same for every unit."""
        if run.data.shots is None:
            return self
        seed = run.data.seed
        if seed not in self.samples:
            self.samples[seed] = load_data(run.data)
        return dataclasses.replace(self, dataset=self.samples[seed])


# unit kinds that are not prompt methods: each builds its model from the run's task
def _zero_shot(ctx: _Context, run: RunConfig) -> PromptModel:
    model = build_model(ctx.backbone, ctx.dataset, {"name": "none"}, run.task)
    if model.num_trainable():
        raise NotApplicable("the task has a head to train; see head-only")
    return model


def _head_only(ctx: _Context, run: RunConfig) -> PromptModel:
    task = {**run.task, "head": "linear"}
    try:
        model = build_model(ctx.backbone, ctx.dataset, {"name": "none"}, task)
    except ConfigError as exc:
        raise NotApplicable(str(exc)) from None
    if not model.num_trainable():  # generation: no head, so nothing would train
        raise NotApplicable("the task has no head to train")
    return model


def _tuned(kind: str) -> Callable[[_Context, RunConfig], PromptModel]:
    def build(ctx: _Context, run: RunConfig) -> PromptModel:
        task = task_config_for(ctx.dataset, run.task)
        return TunedModel(ctx.backbone, task, TuneConfig(kind=kind))

    return build


UNIT_KINDS: dict[str, Callable[[_Context, RunConfig], PromptModel]] = {
    ZERO_SHOT: _zero_shot,
    HEAD_ONLY: _head_only,
    "lora": _tuned("lora"),
    "full": _tuned("full"),
}


def _registered(name: str) -> Callable[[_Context, RunConfig], PromptModel]:
    """A registered prompt method, with the run's options when the run names it."""

    def build(ctx: _Context, run: RunConfig) -> PromptModel:
        method = run.method if run.method.get("name") == name else {"name": name}
        try:
            return build_model(ctx.backbone, ctx.dataset, method, run.task)
        except ConfigError as exc:  # e.g. a text method on an image backbone
            raise NotApplicable(str(exc)) from None

    return build


@dataclass
class CompareReport:
    """Every unit's row (finished or n/a) and the per-method summary; `complete` is
    False when the compare stopped before its last unit (the files are not written)."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    metric: str
    memory: str
    out: Path
    complete: bool = True
    also: list[str] = field(default_factory=list)  # more metrics, each a mean ± sd column

    def markdown(self) -> str:
        title = METRIC_TITLES.get(self.metric, self.metric)
        more = "".join(f"test {METRIC_TITLES[m]}: mean ± sd | " for m in self.also)
        head = (
            f"| method | test {title}: mean ± sd (min-max) | {more}seeds | trainable params | "
            f"file size | train time | {self.memory} | test time |\n"
            + "|---" * (8 + len(self.also))
            + "|\n"
        )
        lines = [_summary_line(s, self.also) for s in self.summary]
        rows = {r.get("test_rows") for r in self.rows if "test_rows" in r}
        tested = ", ".join(f"{n:,}" for n in sorted(rows)) or "-"
        return head + "\n".join(lines) + f"\n\ntest rows scored per unit: {tested}\n"


def _summary_line(s: dict[str, Any], also: list[str]) -> str:
    if "skipped" in s:
        return f"| {s['label']} | n/a: {s['skipped']} |" + " |" * (6 + len(also))
    m = s["metric"]
    spread = (
        f"{metric_cell(m, s['mean'])} ± {metric_cell(m, s['sd'])} "
        f"({metric_cell(m, s['min'])}-{metric_cell(m, s['max'])})"
    )
    more = "".join(f"{_mean_sd(name, s.get('also', {}).get(name))} | " for name in also)
    memory = f"{s['peak_memory_bytes'] / 2**20:.0f} MiB" if s["peak_memory_bytes"] else "-"
    return (
        f"| {s['label']} | {spread} | {more}{s['seeds']} | {s['trainable_parameters']:,} | "
        f"{s['file_bytes'] / 1024:.1f} KiB | {s['train_seconds']:.1f} s | {memory} | "
        f"{s['test_seconds']:.1f} s |"
    )


def _mean_sd(name: str, spread: dict[str, float] | None) -> str:
    if spread is None:
        return "-"
    return f"{metric_cell(name, spread['mean'])} ± {metric_cell(name, spread['sd'])}"


class PeakMemory:
    """Peak memory of a stretch of work (see the module docstring for what is measured)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.peak = self.start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def describe(device: torch.device) -> str:
        return "peak CUDA memory" if device.type == "cuda" else "peak RSS increase"

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start = self.peak = _rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def used(self) -> int:
        return max(self.peak - self.start, 0)


def _rss() -> int:
    """Resident set size in bytes (Linux /proc; 0 where there is no /proc)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def sample_test_rows(rows: list[Example], limit: int, *, by_input: bool = False) -> list[Example]:
    """At most `limit` test rows, a fixed seeded sample in their original order (a test
    file sorted by label keeps both labels); all rows when `limit` is 0. `by_input`
    (generation): `limit` distinct inputs, each with all its rows, which are its
    references, so a sampled input keeps every reference BLEU scores it against."""
    if by_input:
        inputs = list(dict.fromkeys(r.text for r in rows))
        if not limit or limit >= len(inputs):
            return list(rows)
        keep_inputs = {inputs[i] for i in random.Random(0).sample(range(len(inputs)), limit)}
        return [r for r in rows if r.text in keep_inputs]
    if not limit or limit >= len(rows):
        return list(rows)
    keep = sorted(random.Random(0).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


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
        rows, units = [], config.units()
        with tqdm(total=len(units), desc="compare", disable=not progress) as bar:
            for unit in units:
                bar.set_postfix_str(unit.name)
                stop = stop_at[1] if stop_at and len(rows) >= stop_at[0] else None
                row = run_unit(ctx, unit, device, stop_after=stop)
                if row is None:
                    return _report(rows, config, out, device, complete=False)
                rows.append(row)
                bar.update(1)
        report = _report(rows, config, out, device)
        _write(report, config)
        return report


def unit_config(config: CompareConfig, unit: Unit, folder: Path) -> RunConfig:
    """The run a unit is: the compare's run with this unit's method, seed and folder."""
    run = config.run
    method = run.method if run.method.get("name") == unit.method else {"name": unit.method}
    train_config = dataclasses.replace(run.train, seed=unit.seed, overwrite=False)
    data = run.data
    if data.shots is not None:  # few-shot results vary most with the sample: one per seed
        data = dataclasses.replace(data, seed=data.seed + unit.seed)
    return dataclasses.replace(run, method=method, train=train_config, data=data, out=str(folder))


# train keys that change how a run goes, not what it learns or how it is scored
_NOT_RECORDED = ("overwrite", "force_resume", "device", "gradient_checkpointing", "eval_batch_size")


def _recorded(config: RunConfig, test_limit: int) -> dict[str, Any]:
    """What a finished unit must share with this compare to be read back."""
    values = config.to_dict()
    values.pop("out")
    values.pop("baseline", None)
    for key in _NOT_RECORDED:
        values["train"].pop(key, None)
    return {**values, "test_limit": test_limit}


def run_unit(
    ctx: _Context, unit: Unit, device: torch.device, *, stop_after: int | None = None
) -> dict[str, Any] | None:
    """One unit's row: read back when finished, else trained (resumed from its checkpoint
    if one was stopped) and scored. None when `stop_after` stopped it early."""
    folder = ctx.out / "units" / unit.name
    run = unit_config(ctx.config, unit, folder)
    ctx = ctx.for_unit(run)
    recorded = _recorded(run, ctx.config.test_limit)
    done = folder / UNIT_FILE
    if done.is_file() and not ctx.config.run.train.overwrite:
        return _read_back(done, recorded)
    row: dict[str, Any] = {"method": unit.method, "seed": unit.seed, "config": recorded}
    with PeakMemory(device) as memory:
        try:
            model = UNIT_KINDS.get(unit.method, _registered(unit.method))(ctx, run)
        except NotApplicable as exc:
            row["skipped"] = " ".join(str(exc).split())
            atomic_write_text(done, json.dumps(row, indent=2))
            return row
        trained = _fit(ctx, model, run, folder, stop_after)
        if trained is None:
            return None
        model, path, seconds, best_step = trained
        tick = time.perf_counter()
        scores = evaluate(
            model,
            ctx.test,
            batch_size=run.train.eval_batch_size,
            progress=ctx.progress,
            decode=True,  # generation: BLEU, ROUGE-L and exact match of greedy outputs
        )
        test_seconds = time.perf_counter() - tick
    row.update(
        scores,
        test_rows=len(ctx.test),
        trainable_parameters=model.num_trainable(),
        file_bytes=path.stat().st_size,
        train_seconds=seconds,
        best_step=best_step,
        test_seconds=test_seconds,
        peak_memory_bytes=memory.used,
        prompt=str(path),
    )
    atomic_write_text(done, json.dumps(row, indent=2))
    return row


def _read_back(done: Path, recorded: dict[str, Any]) -> dict[str, Any]:
    row = json.loads(done.read_text(encoding="utf-8"))
    if row.get("config") != recorded:
        before = row.get("config") or {}
        keys = sorted(k for k in {*before, *recorded} if before.get(k) != recorded.get(k))
        raise ConfigError(
            f"{done.parent}: this unit was run with other settings ({', '.join(keys)}); "
            "use another --out, or --overwrite to run every unit again"
        )
    return row


def _fit(
    ctx: _Context, model: PromptModel, run: RunConfig, folder: Path, stop_after: int | None
) -> tuple[PromptModel, Path, float, int] | None:
    """Train the unit's model into its folder (or save it untrained when nothing trains);
    returns the best model loaded back, its file, training seconds and best step."""
    meta = {"run": run.to_dict()}
    if not model.num_trainable():  # zero-shot: its file still serves, evals and predicts
        path = model.save(folder / "prompt.safetensors", **meta, dataset=ctx.dataset.name)
        return model, path, 0.0, 0
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
    return loaded, result.prompt_path, result.seconds, result.best_step


def headline(rows: list[dict[str, Any]]) -> str:
    """The figure the table leads with: the first of the report's metrics any row has
    (entity F1, accuracy, macro-F1), else the test loss (generation)."""
    return next((m for m in METRIC_TITLES if any(m in r for r in rows)), "loss")


def _report(
    rows: list[dict[str, Any]],
    config: CompareConfig,
    out: Path,
    device: torch.device,
    *,
    complete: bool = True,
) -> CompareReport:
    metric = headline(rows)
    also = [m for m in SECONDARY if m != metric and any(m in r for r in rows)]
    summary = [
        _summarize(m, [r for r in rows if r["method"] == m], metric, also) for m in config.methods
    ]
    return CompareReport(
        rows=rows,
        summary=[s for s in summary if s is not None],
        metric=metric,
        memory=PeakMemory.describe(device),
        out=out,
        complete=complete,
        also=also,
    )


def _spread(values: list[float]) -> dict[str, float]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "max": max(values)}


def _summarize(
    method: str, rows: list[dict[str, Any]], metric: str, also: list[str] | None = None
) -> dict[str, Any] | None:
    if not rows:
        return None
    label = LABELS.get(method, method)
    scored = [r for r in rows if "skipped" not in r]
    if not scored:
        return {"method": method, "label": label, "skipped": rows[0]["skipped"]}
    values = [float(r[metric]) for r in scored]

    def mean(key: str) -> float:
        return statistics.fmean(float(r[key]) for r in scored)

    more = {
        m: _spread([float(r[m]) for r in scored]) for m in also or [] if all(m in r for r in scored)
    }
    return {
        "method": method,
        "label": label,
        "metric": metric,
        **_spread(values),
        **({"also": more} if more else {}),
        "seeds": len(values),
        "trainable_parameters": scored[0]["trainable_parameters"],
        "file_bytes": int(mean("file_bytes")),
        "train_seconds": mean("train_seconds"),
        "peak_memory_bytes": int(max(r["peak_memory_bytes"] for r in scored)),
        "test_seconds": mean("test_seconds"),
    }


def _write(report: CompareReport, config: CompareConfig) -> None:
    out = report.out
    atomic_write_text(out / "compare.md", report.markdown())
    payload = {
        "metric": report.metric,
        "also": report.also,
        "memory": report.memory,
        "summary": report.summary,
        "units": report.rows,
        "config": {
            "run": config.run.to_dict(),
            "methods": config.methods,
            "seeds": config.seeds,
            "test_limit": config.test_limit,
        },
    }
    atomic_write_text(out / "compare.json", json.dumps(payload, indent=2))
    plot_compare(report.summary, report.metric, out / "compare.png")


def plot_compare(summary: list[dict[str, Any]], metric: str, path: Path) -> Path | None:
    """Metric against trainable parameters (log x), a bar of ± sd and a thin min-max
    line per method. A method with no trainable parameters sits at x = 1."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [s for s in summary if "skipped" not in s]
    if not points:
        return None
    fig, axes = plt.subplots(figsize=(7, 4.2))
    for s in points:
        x = max(s["trainable_parameters"], 1)
        axes.vlines(x, s["min"], s["max"], lw=0.8, color="grey")
        axes.errorbar(x, s["mean"], yerr=s["sd"], fmt="o", capsize=4)
        axes.annotate(s["label"], (x, s["mean"]), textcoords="offset points", xytext=(6, 4))
    axes.set_xscale("log")
    axes.set_xlim(
        0.5, 10 ** (math.log10(max(max(s["trainable_parameters"], 1) for s in points)) + 1)
    )
    axes.set_xlabel("trainable parameters (log; 0 shown at 1)")
    axes.set_ylabel(f"test {METRIC_TITLES.get(metric, metric)}")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, image.getvalue())
    return path
