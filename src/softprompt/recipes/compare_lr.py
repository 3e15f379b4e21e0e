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

`--lr-grid F1,F2,...` (`grid_rows`) chooses each trainable method's lr on validation:
the method is first trained at the first seed at lr_of(method) x F for every factor, each
a normal resumable run folder (`<method>-s<seed>-lr<lr>`; factor 1 keeps the plain
`<method>-s<seed>`, so a unit run before the grid reads back). The lr whose unit reached
the best validation figure (`TrainResult.best_metric`: entity F1, accuracy or minus the
loss, recorded as `validation_metric` in unit.json) is chosen, ties to the factor listed
first; that unit is the first seed's row and the other seeds train at its lr. Selection
never sees a test score, and the units not chosen are never scored on the test split
(it costs time and must not tempt anyone to pick by it). A head beside a gridded method
keeps head-only's lr; head-only's own lr is what its grid scales. Zero-shot trains
nothing and a method the task cannot have (n/a, found at its first grid unit) is not
gridded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softprompt.backbones import Backbone
from softprompt.data import Dataset
from softprompt.errors import ConfigError
from softprompt.model import load_prompt_meta
from softprompt.recipes.baselines import recommended_lr
from softprompt.recipes.compare_table import HEAD_ONLY, ZERO_SHOT
from softprompt.tasks import build_task
from softprompt.tasks.presets import task_config_for
from softprompt.train.loop import validation_metric

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


@dataclass(frozen=True)
class Unit:
    """One cell of the grid: a method at a seed; `lr` only for an lr-grid unit at a
    factor other than 1 (None: the method's own lr, and the plain folder name)."""

    method: str
    seed: int
    lr: float | None = None

    @property
    def name(self) -> str:
        return f"{self.method}-s{self.seed}" + ("" if self.lr is None else f"-lr{self.lr:g}")


def check_lr_grid(factors: list[float]) -> None:
    """--lr-grid: distinct finite factors > 0."""
    bad = [f for f in factors if not 0 < f < float("inf")]
    if bad:
        raise ConfigError(f"--lr-grid: factors must be finite numbers > 0, got {bad[0]:g}")
    if len(set(factors)) != len(factors):
        raise ConfigError("--lr-grid: name each factor once (e.g. 0.3,1,3)")


def check_grid_lrs(factors: list[float], lrs: Mapping[str, float]) -> None:
    """Every lr the grid would train at (a method's lr x each factor) is a finite number
    > 0: `--lr-grid 1,1e308` passes the factor check, yet 1e-3 x 1e308 overflows, and
    would only be refused by the loop halfway through the compare."""
    for method, base in lrs.items():
        for factor in factors:
            if not 0 < base * factor < float("inf"):
                raise ConfigError(
                    f"--lr-grid: {method}'s lr {base:g} x {factor:g} is {base * factor:g}, "
                    "not a usable lr; use factors like 0.3,1,3"
                )


def grid_lr(base: float, factor: float) -> float | None:
    """An lr-grid unit's lr (12 significant digits: 0.03 x 0.3 is 0.009, not
    0.008999...); None at factor 1, the method's own lr."""
    return None if factor == 1 else float(f"{base * factor:.12g}")


def validation_of(row: dict[str, Any]) -> float:
    """The validation figure a finished unit reached: unit.json's, or for a unit run
    before the grid existed its best prompt file's; -inf when it has none (diverged)."""
    if "validation_metric" in row:
        return float(row["validation_metric"])
    path = Path(row.get("prompt", ""))
    if row.get("prompt") and path.is_file():
        scores = (load_prompt_meta(path).get("metrics") or {}).get("validation")
        if isinstance(scores, dict):
            return float(validation_metric(scores))
    return -math.inf


def choose(rows: list[dict[str, Any]]) -> int:
    """The index of the best validation figure; a tie goes to the first."""
    figures = [validation_of(r) for r in rows]
    return figures.index(max(figures))


RunOne = Callable[[Unit, bool], "dict[str, Any] | None"]  # (unit, score on test) -> row
ScoreOne = Callable[[Unit, "dict[str, Any]"], "dict[str, Any]"]  # its test scores added


def grid_rows(
    method: str,
    seeds: list[int],
    factors: list[float],
    base_lr: float,
    run_one: RunOne,
    score_one: ScoreOne,
    rows: list[dict[str, Any]],
) -> dict[str, Any] | None:
    """Append a method's rows under --lr-grid (see the module docstring) to `rows` as
    they finish, and return the grid's record (the lrs tried with their validation
    figures, the one chosen; {} for a method that is n/a); None when `run_one` stopped a
    unit early (tests' stop_at)."""
    tried: list[tuple[Unit, dict[str, Any]]] = []
    for factor in factors:
        unit = Unit(method, seeds[0], grid_lr(base_lr, factor))
        row = run_one(unit, False)
        if row is None:
            return None
        if "skipped" in row:  # n/a on this task: nothing to choose
            rows.append(row)
            return {} if run_rest(method, seeds[1:], unit.lr, run_one, rows) else None
        tried.append((unit, row))
    unit, row = tried[choose([r for _, r in tried])]
    rows.append(score_one(unit, row))  # only the chosen unit is scored on the test split
    if not run_rest(method, seeds[1:], unit.lr, run_one, rows):
        return None
    lrs = [base_lr if u.lr is None else u.lr for u, _ in tried]
    return {
        "chosen_lr": base_lr if unit.lr is None else unit.lr,
        "tried": [
            {"lr": lr, "unit": u.name, "validation_metric": _finite(validation_of(r))}
            for lr, (u, r) in zip(lrs, tried, strict=True)
        ],
    }


def run_rest(
    method: str, seeds: list[int], lr: float | None, run_one: RunOne, rows: list[dict[str, Any]]
) -> bool:
    """Run (or read back) `method` at `lr` for these seeds, scored, appending each row;
    False when one stopped early."""
    for seed in seeds:
        row = run_one(Unit(method, seed, lr), True)
        if row is None:
            return False
        rows.append(row)
    return True


def _finite(value: float) -> float | None:
    """JSON has no -inf: a unit with no validation figure (diverged) records None."""
    return value if math.isfinite(value) else None
