"""The learning rates of `softprompt compare`'s units (issue 22).

One lr for every method is not a fair comparison: at a shared 0.03 prefix tuning and
LoRA collapsed on movie-sentiment while the soft prompt was fine; at each method's own
recommended lr LoRA + a tagging head reached entity F1 0 on wnut16, because the head
moved at LoRA's 1e-3. So a unit's lr is, first match:

* `--lr-for method=X`: that method's own;
* without `--lr` (`per_method_lr`): the lr the method recommends (`recommended_lr`);
* else `train.lr`, shared by every unit.

A task head that trains beside other parameters (a prompt, LoRA, the backbone) gets its
own lr (`train.head_lr`): `--head-lr` when given, else under per-method lrs head-only's
lr, the lr a head alone learns at; with a shared `--lr` and no `--head-lr` it trains at
the shared lr like everything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from softprompt.backbones import Backbone
from softprompt.data import Dataset
from softprompt.errors import ConfigError
from softprompt.recipes.baselines import recommended_lr
from softprompt.recipes.compare_table import HEAD_ONLY, ZERO_SHOT
from softprompt.tasks import build_task
from softprompt.tasks.presets import task_config_for

# units whose model is the head alone (or nothing): no second lr to give
HEAD_ALONE = (ZERO_SHOT, HEAD_ONLY, "none")


def check_lr_for(lr_for: Mapping[str, float], known: list[str]) -> None:
    """--lr-for names known methods, each with a finite lr > 0."""
    unknown = [m for m in lr_for if m not in known]
    if unknown:
        raise ConfigError(
            f"--lr-for: unknown method {', '.join(map(repr, unknown))}; "
            f"use any of {', '.join(known)}"
        )
    bad = {m: v for m, v in lr_for.items() if not 0 < v < float("inf")}
    if bad:
        method, value = next(iter(bad.items()))
        raise ConfigError(f"--lr-for: {method}'s lr must be a finite number > 0, got {value}")


def lr_of(method: str, *, lr_for: Mapping[str, float], per_method: bool, shared: float) -> float:
    """The lr `method`'s units train at (see the module docstring)."""
    if method in lr_for:
        return float(lr_for[method])
    own = recommended_lr(method) if per_method else None
    return shared if own is None else own


def head_lr_of(
    method: str, *, has_head: bool, given: float | None, per_method: bool, head_only: float
) -> float | None:
    """The head lr of a unit (None: its lr): `given` (--head-lr), else head-only's lr
    under per-method lrs, for a unit whose task head trains beside other parameters."""
    if method in HEAD_ALONE or not has_head:
        return None
    if given is not None:
        return given
    return head_only if per_method else None


def task_has_head(backbone: Backbone, dataset: Dataset, task: dict[str, Any]) -> bool:
    """Whether the run's task trains a head of its own (a linear or tagging head), found
    by building the task alone: cheap, and known before a unit's model is, so a finished
    unit is read back without building it. The verbalizer's words do not change whether
    there is a head (an `auto` one is not searched here), and torch's RNG is left as it
    was, so the units' inits do not move."""
    framing = {k: v for k, v in task.items() if k != "verbalizer"}
    with torch.random.fork_rng(devices=[]):
        try:
            built = build_task(task_config_for(dataset, framing), backbone)
        except ConfigError:  # the unit itself says why (n/a)
            return False
    return any(p.requires_grad for p in built.parameters())
