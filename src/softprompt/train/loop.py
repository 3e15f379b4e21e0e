"""The training loop. It calls `model(batch)` and nothing method-specific.

Data order is a pure function of (seed, step), the learning rate a pure
function of the step, so a resumed run replays exactly; the best prompt is
saved atomically whenever validation improves, so a crash or a diverging
loss never loses it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from softprompt.data import Dataset, Example
from softprompt.errors import DataError, TrainingError
from softprompt.evaluate import evaluate
from softprompt.model import PromptModel
from softprompt.plot import plot_curves
from softprompt.promptfile import atomic_write_text
from softprompt.train import distributed, guard, run_dir
from softprompt.train.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
from softprompt.train.config import TrainConfig

PROMPT_FILE = "prompt.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclass
class TrainResult:
    prompt_path: Path
    best_metric: float
    best_step: int
    steps_done: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def micro_batch(examples: list[Example], batch_size: int, seed: int, index: int) -> list[Example]:
    """The `index`-th global micro-batch: epoch-wise seeded shuffles, last partial batch dropped."""
    per_epoch = max(1, len(examples) // batch_size)
    epoch, slot = divmod(index, per_epoch)
    order = torch.randperm(
        len(examples), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
    )
    picks = order[slot * batch_size : (slot + 1) * batch_size]
    return [examples[int(i)] for i in picks]


def _metric(result: dict[str, Any]) -> float:
    return result["accuracy"] if "accuracy" in result else -result["loss"]


class _Run:
    """State of one run; split out so each phase of the loop is a short method."""

    def __init__(
        self,
        model: PromptModel,
        dataset: Dataset,
        config: TrainConfig,
        out_dir: Path,
        meta: dict[str, Any],
    ):
        self.model, self.dataset, self.config, self.out_dir, self.meta = (
            model,
            dataset,
            config,
            out_dir,
            meta,
        )
        self.process = distributed.setup()
        if config.batch_size % self.process.world:
            raise TrainingError(
                f"train.batch_size {config.batch_size} must divide evenly over {self.process.world} processes"
            )
        if len(dataset.train) < config.batch_size:
            raise TrainingError(
                f"the training split has {len(dataset.train)} rows, fewer than train.batch_size {config.batch_size}"
            )
        if not model.trainable_parameters():
            raise TrainingError(f"method {model.method_name!r} with this task has nothing to train")
        torch.manual_seed(config.seed)
        self.wrapped = distributed.wrap(model, self.process)
        self.optimizer = torch.optim.AdamW(
            model.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.validation = dataset.validation[: config.eval_examples or None]
        if not self.validation:
            raise DataError(
                f"dataset {dataset.name!r} has an empty validation split; the best prompt is "
                "chosen on it, so give validation rows (e.g. --validation-file)"
            )
        self.state: dict[str, Any] = {
            "step": 0,
            "best_metric": -math.inf,
            "best_step": -1,
            "bad_evals": 0,
            "history": [],
            "seconds": 0.0,
        }

    @property
    def prompt_path(self) -> Path:
        return self.out_dir / PROMPT_FILE

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
            group["lr"] = cfg.lr_at(step)
        total, correct, scored = 0.0, 0.0, 0.0
        for micro in range(cfg.grad_accum):
            rows = micro_batch(
                self.dataset.train, cfg.batch_size, cfg.seed, step * cfg.grad_accum + micro
            )
            shard = rows[rank * len(rows) // world : (rank + 1) * len(rows) // world]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                out = self.wrapped(self.model.collate(shard))
            loss = out.loss
            if out.scores is not None and out.targets is not None:
                correct += float((out.scores.argmax(-1) == out.targets).sum())
                scored += len(shard)
            guard.check_loss(loss, step, cfg, self.prompt_path)
            (loss / cfg.grad_accum).backward()
            total += loss.item() / cfg.grad_accum
        torch.nn.utils.clip_grad_norm_(self.model.trainable_parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # shards are equal in size, so the mean of the ranks' means is the global mean
        total, correct, scored = distributed.all_sum([total, correct, scored], self.process)
        total /= self.process.world
        return {"loss": total, **({"accuracy": correct / scored} if scored else {})}

    def evaluate_and_keep_best(self, step: int) -> dict[str, Any]:
        result = evaluate(
            self.model,
            self.validation,
            batch_size=self.config.eval_batch_size,
            process=self.process,
            bf16=self.config.bf16,
        )
        guard.check_evaluation(self.state, result, step, self.config, self.prompt_path)
        metric = _metric(result)
        if metric > self.state["best_metric"]:
            self.state.update(best_metric=metric, best_step=step, bad_evals=0)
            if self.process.main:
                self.model.save(
                    self.prompt_path, **self.meta, metrics={"validation": result, "step": step}
                )
        else:
            self.state["bad_evals"] += 1
        return result

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

    def resumable(self) -> dict[str, Any]:
        describe = self.model.describe()
        return run_dir.resumable_config(
            self.config, describe, self.dataset.name, self.dataset.train
        )


def _recent_accuracy(history: list[dict[str, Any]], window: int = 20) -> dict[str, str]:
    """Training accuracy over the last `window` steps: one batch of 8 is too noisy to read."""
    recent = [h["accuracy"] for h in history if h["kind"] == "train" and "accuracy" in h]
    if not recent:
        return {}
    return {"acc": f"{sum(recent[-window:]) / len(recent[-window:]):.3f}"}


def _val_postfix(result: dict[str, Any]) -> dict[str, str]:
    if "accuracy" in result:
        return {"val_acc": f"{result['accuracy']:.3f}"}
    return {"val_loss": f"{result['loss']:.3f}"}


def _advance(run: _Run, step: int) -> tuple[dict[str, str], bool]:
    """One optimizer step, plus evaluation and checkpoint when due.

    Returns the progress-bar fields and whether early stopping says to stop."""
    config, tick = run.config, time.perf_counter()
    figures = run.train_step(step)
    guard.after_step(
        run.state, figures["loss"], step, run.model.trainable_parameters(), config, run.prompt_path
    )
    run.log({"kind": "train", "step": step + 1, **figures, "lr": config.lr_at(step)})
    rows = config.batch_size * config.grad_accum
    postfix = {"loss": f"{figures['loss']:.3f}", **_recent_accuracy(run.state["history"])}
    postfix["ex/s"] = f"{rows / (time.perf_counter() - tick):.1f}"
    if (step + 1) % config.eval_every and step + 1 != config.steps:
        return postfix, False
    result = run.evaluate_and_keep_best(step + 1)
    run.log({"kind": "eval", "step": step + 1, **result})
    run.state["step"] = step + 1
    run.checkpoint()
    stop = bool(config.patience) and run.state["bad_evals"] >= config.patience
    return {**postfix, **_val_postfix(result)}, stop


@run_dir.claims_out_dir(lambda bound: (bound.arguments["out_dir"], bound.arguments["config"]))
def train(
    model: PromptModel,
    dataset: Dataset,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train `model`'s prompt (and head) on `dataset.train`, keeping the best on validation.

    `stop_after` ends the run after that many steps as if interrupted (for resume tests)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {}, train=config.to_dict(), dataset=dataset.name)
    run = _Run(model, dataset, config, out_dir, meta)
    if resume:
        run.resume()
    elif run.process.main:
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    model.train()
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
    if run.state["best_step"] < 0:
        raise TrainingError(
            "training ended before any evaluation; raise train.steps or lower train.eval_every"
        )
    return TrainResult(
        prompt_path=run.prompt_path,
        best_metric=run.state["best_metric"],
        best_step=run.state["best_step"],
        steps_done=run.state["step"],
        seconds=run.state["seconds"],
        history=run.state["history"],
    )
