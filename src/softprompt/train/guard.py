"""Divergence guard: stop a run whose loss blows up, before it saves garbage.

A NaN loss is easy to see; a loss that climbs from 0.69 to 1e9 stays finite, and
with no earlier evaluation its prompt would be saved as the "best". The guard
compares a smoothed training loss, and each validation loss, with the run's own
first-step loss (taken before any update), and checks the trainable tensors after
every optimizer step. Its state lives in the run's state dict, so it is saved in
the checkpoint and a resumed run judges against the same reference.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from softprompt.errors import TrainingDiverged
from softprompt.train.config import TrainConfig

SMOOTHING = 0.1  # weight of the newest step in the exponential moving average
FLOOR = 1.0  # a first loss near 0 must not make ordinary noise look like a blow-up


def threshold(state: dict[str, Any], config: TrainConfig) -> float:
    return config.divergence_factor * max(state["loss_reference"], FLOOR)


def diverged(reason: str, step: int, config: TrainConfig, prompt_path: Path) -> TrainingDiverged:
    """The one message for every kind of divergence: when, at which lr, what is kept, what to do."""
    kept = (
        f"the best prompt so far is kept at {prompt_path}"
        if prompt_path.exists()
        else "no prompt was saved yet (no evaluation had run)"
    )
    return TrainingDiverged(
        f"training diverged at step {step} (lr {config.lr_at(max(step - 1, 0)):.3g}): {reason}; "
        f"{kept}. Lower train.lr (now {config.lr}) or use more warmup "
        "(train.warmup_steps), then train again with --overwrite or a new --out"
    )


def check_loss(loss: torch.Tensor, step: int, config: TrainConfig, prompt_path: Path) -> None:
    """Called on each micro-batch's loss before backward: a non-finite one stops the run."""
    if not torch.isfinite(loss):
        raise diverged(f"loss became {loss.item()}", step + 1, config, prompt_path)


def after_step(
    state: dict[str, Any],
    loss: float,
    step: int,
    parameters: list[torch.nn.Parameter],
    config: TrainConfig,
    prompt_path: Path,
) -> None:
    """Called after each optimizer step with its mean loss (computed before the update)."""
    bad = [tuple(p.shape) for p in parameters if not torch.isfinite(p).all()]
    if bad:
        raise diverged(
            f"the trainable tensors {bad} hold NaN/inf after the update",
            step + 1,
            config,
            prompt_path,
        )
    if state.get("loss_reference") is None:
        state["loss_reference"], state["loss_smoothed"] = loss, loss
        return
    state["loss_smoothed"] = (1 - SMOOTHING) * state["loss_smoothed"] + SMOOTHING * loss
    limit = threshold(state, config)
    if not math.isfinite(state["loss_smoothed"]) or state["loss_smoothed"] > limit:
        raise diverged(
            f"the smoothed loss {state['loss_smoothed']:.4g} passed {config.divergence_factor:g} "
            f"x the first step's loss {state['loss_reference']:.4g} (train.divergence_factor)",
            step + 1,
            config,
            prompt_path,
        )


def check_evaluation(
    state: dict[str, Any], result: dict[str, Any], step: int, config: TrainConfig, prompt_path: Path
) -> None:
    """Called on each validation result before it can become the best prompt."""
    loss = result.get("loss", 0.0)
    if not math.isfinite(loss):
        raise diverged(f"the validation loss is {loss}", step, config, prompt_path)
    if state.get("loss_reference") is not None and loss > threshold(state, config):
        raise diverged(
            f"the validation loss {loss:.4g} passed {config.divergence_factor:g} x the first "
            f"step's loss {state['loss_reference']:.4g} (train.divergence_factor)",
            step,
            config,
            prompt_path,
        )
