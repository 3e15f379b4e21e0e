"""The training loop. It calls `model(batch)` and nothing method- or task-specific.

One run trains one task or several at once: the model is a `MultiTaskModel` (one task is
the case of one), each micro-batch a seeded mix of (task, example) rows (train/sampler.py),
each task validated on its own split and its best prompt kept in its own file.

Data order is a pure function of (seed, step), the learning rate a pure function of the
step, so a resumed run replays exactly; each best prompt is saved atomically whenever its
task's validation improves, so a crash or a diverging loss never loses it.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from softprompt import distributed
from softprompt.backbones import place
from softprompt.data import Dataset
from softprompt.device import autocast, resolve_device
from softprompt.errors import DataError, TrainingError
from softprompt.evaluate import evaluate
from softprompt.files import atomic_write_text
from softprompt.inject.checkpointing import checkpointable_layers, layer_checkpointing
from softprompt.model import MultiTaskModel, PromptModel
from softprompt.plot import plot_curves
from softprompt.train import guard, run_dir
from softprompt.train.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
from softprompt.train.config import TrainConfig
from softprompt.train.sampler import TaskSampler

PROMPT_FILE = "prompt.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclass
class TrainResult:
    """`prompt_path` is the (first) task's best prompt; `prompt_paths` has every task's."""

    prompt_path: Path
    best_metric: float  # mean over tasks of each task's best validation metric
    best_step: int  # the last step at which a task's best prompt was saved
    steps_done: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    prompt_paths: dict[str, Path] = field(default_factory=dict)
    best: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> metric, step


def prompt_path(out_dir: Path, task: str, tasks: list[str]) -> Path:
    """One task: OUT/prompt.safetensors; several: OUT/<task>/prompt.safetensors."""
    return out_dir / PROMPT_FILE if len(tasks) == 1 else out_dir / task / PROMPT_FILE


def task_key(name: str) -> str:
    """A dataset name as a task name (no '.', which module names cannot hold)."""
    return name.replace(".", "_") or "task"


# the figure each kind of task keeps its best prompt by, in order of preference
HEADLINE = ("entity_f1", "accuracy")


def validation_metric(result: dict[str, Any]) -> float:
    """Entity F1 for tagging, accuracy for classification, minus the loss otherwise: the
    figure a run keeps its best prompt by (and `compare --lr-grid` picks an lr by)."""
    return next((result[k] for k in HEADLINE if k in result), -result["loss"])


def cut_note(task: str, dataset: Dataset, kept: int) -> str:
    """The line a run prints when train.eval_examples cuts a task's validation rows: how
    many are scored and, for classification, how many classes they cover and how evenly,
    so a cut that drops classes (rows sorted by label) is never silent."""
    rows = dataset.validation
    line = f"train.eval_examples={kept}: task {task!r} is validated on the first {kept} of its "
    line += f"{len(rows)} validation rows"
    if dataset.task == "classification":
        every = Counter(e.label for e in rows)
        counts = Counter(e.label for e in rows[:kept])
        low, high = min(counts.values()), max(counts.values())
        each = f"{low} to {high} rows" if low < high else f"{low} row{'s' * (low > 1)}"
        line += f" ({len(counts)} of {len(every)} classes, {each} each)"
    return line + "; set it to 0 to score them all"


def optimizer_groups(model: MultiTaskModel, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW's parameter groups: one, or with `train.head_lr` and a head that trains
    beside other parameters, the rest then the heads (marked `head`, for `train_step`).
    Without head_lr it stays one group, so checkpoints written before it resume as they
    were (their optimizer state holds one group)."""
    params = model.trainable_parameters()
    heads = {id(p) for p in model.head_parameters()} if config.head_lr is not None else set()
    rest = [p for p in params if id(p) not in heads]
    if not heads or not rest:
        return [{"params": params}]
    head = [p for p in params if id(p) in heads]
    return [{"params": rest}, {"params": head, "head": True, "lr": config.head_lr}]


class _Run:
    """State of one run; split out so each phase of the loop is a short method."""

    def __init__(
        self,
        model: MultiTaskModel,
        data: dict[str, Dataset],
        config: TrainConfig,
        out_dir: Path,
        meta: dict[str, Any],
    ):
        self.model, self.data, self.config, self.out_dir, self.meta = (
            model,
            data,
            config,
            out_dir,
            meta,
        )
        self.device = distributed.local_device(resolve_device(config.device))
        self.process = distributed.setup(self.device)
        self._check_sizes()
        place(model.backbone.model, self.device)  # a --device-map model stays spread
        model.to(self.device)
        torch.manual_seed(config.seed)
        self.sharded = self._shard_backbone()
        self.wrapped = distributed.wrap(model, self.process)
        self.optimizer = torch.optim.AdamW(
            optimizer_groups(model, config), lr=config.lr, weight_decay=config.weight_decay
        )
        self.sampler = TaskSampler(
            {name: d.train for name, d in data.items()},
            batch_size=config.batch_size,
            seed=config.seed,
            micro_batches=config.steps * config.grad_accum,
            sampler=config.sampler,
            temperature=config.temperature,
        )
        self.validation = {n: d.validation[: config.eval_examples or None] for n, d in data.items()}
        for name, dataset in data.items():
            if self.process.main and len(dataset.validation) > len(self.validation[name]):
                print(cut_note(name, dataset, config.eval_examples), file=sys.stderr)
        self.state: dict[str, Any] = {
            "step": 0,
            "best": {name: {"metric": -math.inf, "step": -1} for name in data},
            "bad_evals": 0,
            "history": [],
            "seconds": 0.0,
        }

    def _shard_backbone(self) -> list[torch.nn.Module]:
        """`train.fsdp`: the frozen layers sharded over the processes (none when off)."""
        if not self.config.fsdp:
            return []
        backbone = self.model.backbone
        if backbone.spec.kind == "vision":
            raise TrainingError(
                f"train.fsdp: backbone {backbone.name!r} is a vision model, whose prompts call "
                "its attention projections directly; train it without --fsdp"
            )
        blocks = checkpointable_layers(backbone)
        return distributed.shard_frozen(backbone.core(), blocks, self.process, self.device)

    def _check_sizes(self) -> None:
        config, world = self.config, self.process.world
        if config.batch_size % world:
            raise TrainingError(
                f"train.batch_size {config.batch_size} must divide evenly over {world} processes"
            )
        for name, dataset in self.data.items():
            if len(self.data) == 1 and len(dataset.train) < config.batch_size:
                raise TrainingError(
                    f"the training split has {len(dataset.train)} rows, fewer than "
                    f"train.batch_size {config.batch_size}"
                )
            if not dataset.train:
                raise DataError(f"task {name!r}: dataset {dataset.name!r} has no training rows")
            if not dataset.validation:
                raise DataError(
                    f"task {name!r}: dataset {dataset.name!r} has an empty validation split; the "
                    "best prompt is chosen on it, so give validation rows (e.g. --validation-file)"
                )
        if not self.model.trainable_parameters():
            methods = sorted({m.method_name for m in self.model.models.values()})
            raise TrainingError(
                f"method {', '.join(methods)!r} with this task has nothing to train"
            )

    @property
    def tasks(self) -> list[str]:
        return list(self.data)

    def prompt_path(self, task: str) -> Path:
        return prompt_path(self.out_dir, task, self.tasks)

    def resume(self) -> None:
        """Load the checkpoint if there is one; the metrics log restarts from what it knew."""
        path = self.out_dir / CHECKPOINT_FILE
        if path.exists():
            run_dir.check_resume(path, checkpoint_config(path), self.resumable(), self.config)
            self.state = load_checkpoint(path, self.model, self.optimizer)
        if self.process.main:
            lines = "".join(json.dumps(r) + "\n" for r in self.state["history"])
            atomic_write_text(self.out_dir / "metrics.jsonl", lines)

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches.

        Returns the mean loss and, for classification, the accuracy on the step's
        rows (summed over processes, so every rank logs the global figure)."""
        cfg, rank, world = self.config, self.process.rank, self.process.world
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.head_lr_at(step) if group.get("head") else cfg.lr_at(step)
        total, correct, scored = 0.0, 0.0, 0.0
        for micro in range(cfg.grad_accum):
            rows = self.sampler.micro_batch(step * cfg.grad_accum + micro)
            shard = rows[rank * len(rows) // world : (rank + 1) * len(rows) // world]
            checkpointing = layer_checkpointing(self.model.backbone, cfg.gradient_checkpointing)
            with autocast(self.device, cfg.bf16), checkpointing:
                out = self.wrapped(self.model.collate(shard))
            right, count = out.counts()
            correct, scored = correct + right, scored + count
            guard.check_loss(out.loss, step, cfg, self.kept_path())
            (out.loss / cfg.grad_accum).backward()
            total += out.loss.item() / cfg.grad_accum
        distributed.reshard(self.sharded)
        for group in self.model.parameter_groups():  # per task: one never rescales another
            torch.nn.utils.clip_grad_norm_(group, cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # shards are equal in size, so the mean of the ranks' means is the global mean
        total, correct, scored = distributed.all_sum([total, correct, scored], self.process)
        total /= self.process.world
        return {"loss": total, **({"accuracy": correct / scored} if scored else {})}

    def evaluate_and_keep_best(self, step: int) -> dict[str, dict[str, Any]]:
        """Score every task on its validation rows; save each task's prompt that improved."""
        results, improved = {}, False
        for name, model in self.model.models.items():
            result = evaluate(
                model,
                self.validation[name],
                batch_size=self.config.eval_batch_size,
                process=self.process,
                bf16=self.config.bf16,
                desc=f"validation {name}",
            )
            guard.check_evaluation(self.state, result, step, self.config, self.kept_path())
            best = self.state["best"][name]
            if validation_metric(result) > best["metric"]:
                best.update(metric=validation_metric(result), step=step)
                improved = True
                if self.process.main:
                    model.save(
                        self.prompt_path(name),
                        **self.meta,
                        dataset=self.data[name].name,
                        metrics={"validation": result, "step": step},
                    )
            results[name] = result
        self.state["bad_evals"] = 0 if improved else self.state["bad_evals"] + 1
        return results

    def log(self, record: dict[str, Any]) -> None:
        self.state["history"].append(record)
        if self.process.main:
            with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def checkpoint(self) -> None:
        if self.process.main:
            save_checkpoint(
                self.out_dir / CHECKPOINT_FILE,
                self.model,
                self.optimizer,
                self.state,
                config=self.resumable(),
            )
            plot_curves(self.state["history"], self.out_dir / "curves.png")
        distributed.barrier(self.process)

    def result(self) -> TrainResult:
        best = self.state["best"]
        return TrainResult(
            prompt_path=self.prompt_path(self.tasks[0]),
            best_metric=sum(b["metric"] for b in best.values()) / len(best),
            best_step=max(b["step"] for b in best.values()),
            steps_done=self.state["step"],
            seconds=self.state["seconds"],
            history=self.state["history"],
            prompt_paths={t: self.prompt_path(t) for t in self.tasks},
            best={t: dict(b) for t, b in best.items()},
        )

    def kept_path(self) -> Path:
        """Where a best prompt is kept, for the divergence message (the first task's)."""
        kept = [self.prompt_path(t) for t in self.tasks if self.prompt_path(t).exists()]
        return kept[0] if kept else self.prompt_path(self.tasks[0])

    def resumable(self) -> dict[str, Any]:
        """What a resumed run must share with this one (train/run_dir.py), per task."""
        configs = {
            name: run_dir.resumable_config(
                self.config,
                model.describe(),
                self.data[name].name,
                self.data[name].train,
                validation=self.data[name].validation,
            )
            for name, model in self.model.models.items()
        }
        return next(iter(configs.values())) if len(configs) == 1 else {"tasks": configs}


def _recent_accuracy(history: list[dict[str, Any]], window: int = 20) -> dict[str, str]:
    """Training accuracy over the last `window` steps: one batch of 8 is too noisy to read."""
    recent = [h["accuracy"] for h in history if h["kind"] == "train" and "accuracy" in h]
    if not recent:
        return {}
    return {"acc": f"{sum(recent[-window:]) / len(recent[-window:]):.3f}"}


def _val_postfix(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The validation figure on the progress bar (the mean over tasks when there are several)."""
    values = list(results.values())
    for key, short in (("entity_f1", "val_f1"), ("accuracy", "val_acc")):
        if all(key in r for r in values):
            return {short: f"{sum(r[key] for r in values) / len(values):.3f}"}
    return {"val_loss": f"{sum(r['loss'] for r in values) / len(values):.3f}"}


def _advance(run: _Run, step: int) -> tuple[dict[str, str], bool]:
    """One optimizer step, plus evaluation and checkpoint when due.

    Returns the progress-bar fields and whether early stopping says to stop."""
    config, tick = run.config, time.perf_counter()
    figures = run.train_step(step)
    guard.after_step(
        run.state, figures["loss"], step, run.model.trainable_parameters(), config, run.kept_path()
    )
    head = {"head_lr": config.head_lr_at(step)} if config.head_lr is not None else {}
    run.log({"kind": "train", "step": step + 1, **figures, "lr": config.lr_at(step), **head})
    rows = config.batch_size * config.grad_accum
    postfix = {"loss": f"{figures['loss']:.3f}", **_recent_accuracy(run.state["history"])}
    postfix["ex/s"] = f"{rows / (time.perf_counter() - tick):.1f}"
    if (step + 1) % config.eval_every and step + 1 != config.steps:
        return postfix, False
    results = run.evaluate_and_keep_best(step + 1)
    several = len(results) > 1
    for name, result in results.items():
        run.log({"kind": "eval", "step": step + 1, **({"task": name} if several else {}), **result})
    run.state["step"] = step + 1
    run.checkpoint()
    stop = bool(config.patience) and run.state["bad_evals"] >= config.patience
    return {**postfix, **_val_postfix(results)}, stop


def as_multitask(
    model: PromptModel | MultiTaskModel, dataset: Dataset | dict[str, Dataset]
) -> tuple[MultiTaskModel, dict[str, Dataset]]:
    """One model and dataset become a mixture of one task, named after the dataset."""
    if isinstance(model, MultiTaskModel):
        if not isinstance(dataset, dict) or set(dataset) != set(model.names):
            raise TrainingError(
                f"a multi-task model needs one dataset per task: tasks {model.names}, "
                f"datasets {sorted(dataset) if isinstance(dataset, dict) else dataset!r}"
            )
        return model, dataset
    name = task_key(dataset.name)
    return MultiTaskModel.single(name, model), {name: dataset}


@run_dir.claims_out_dir(lambda bound: (bound.arguments["out_dir"], bound.arguments["config"]))
def train(
    model: PromptModel | MultiTaskModel,
    dataset: Dataset | dict[str, Dataset],
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train the prompts (and heads) on the training rows, keeping each task's best.

    `model` is one `PromptModel` with its `Dataset`, or a `MultiTaskModel` with a dataset
    per task. `stop_after` ends the run after that many steps as if interrupted."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    multi, data = as_multitask(model, dataset)
    meta = dict(meta or {}, train=config.to_dict())
    run = _Run(multi, data, config, out_dir, meta)
    if resume:
        run.resume()
    elif run.process.main:
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    multi.train()
    start, began, seconds_before = run.state["step"], time.perf_counter(), run.state["seconds"]
    show, shown = progress and run.process.main, {}
    with tqdm(
        total=config.steps, initial=start, desc="train", disable=not show, dynamic_ncols=True
    ) as bar:
        for step in range(start, config.steps):
            if stop_after is not None and step - start >= stop_after:
                break
            run.state["seconds"] = seconds_before + time.perf_counter() - began
            postfix, stop = _advance(run, step)
            shown = {**shown, **postfix}  # the last validation figure stays on the bar
            bar.set_postfix(shown)
            bar.update(1)
            if stop:
                break
    run.state["seconds"] = seconds_before + time.perf_counter() - began
    if max(b["step"] for b in run.state["best"].values()) < 0:
        raise TrainingError(
            "training ended before any evaluation; raise train.steps or lower train.eval_every"
        )
    return run.result()
