"""The units of `softprompt compare` (recipes/compare.py): how each kind builds its
model, and how a finished unit's record is checked before it is read back.

A unit kind that is not a prompt method (zero-shot, head-only, LoRA, full) builds its
model from the run's task; any other name is a registered method. A unit a task cannot
have raises `NotApplicable`, whose message is the table's reason. A finished unit's
unit.json records the settings it ran with (`recorded`); a compare reads it back only
when they are its own, and else names each setting that differs.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from softprompt.backbones import Backbone
from softprompt.config import RunConfig
from softprompt.data import Dataset, Example
from softprompt.errors import ConfigError
from softprompt.methods import available_methods, method_config_class
from softprompt.model import PromptModel, build_model
from softprompt.recipes.baselines import TuneConfig, TunedModel
from softprompt.recipes.compare_table import HEAD_ONLY, ZERO_SHOT
from softprompt.tasks.auto_verbalizer import resolve_verbalizer
from softprompt.tasks.presets import task_config_for

Build = Callable[[Backbone, Dataset, RunConfig], PromptModel]


class NotApplicable(Exception):
    """A unit this task cannot have; its message is the reason shown in the table."""


# unit kinds that are not prompt methods: each builds its model from the run's task
def _zero_shot(backbone: Backbone, dataset: Dataset, run: RunConfig) -> PromptModel:
    model = build_model(backbone, dataset, {"name": "none"}, run.task)
    if model.num_trainable():
        raise NotApplicable("the task has a head to train; see head-only")
    return model


def _head_only(backbone: Backbone, dataset: Dataset, run: RunConfig) -> PromptModel:
    task = {**run.task, "head": "linear"}
    try:
        model = build_model(backbone, dataset, {"name": "none"}, task)
    except ConfigError as exc:
        raise NotApplicable(str(exc)) from None
    if not model.num_trainable():  # generation: no head, so nothing would train
        raise NotApplicable("the task has no head to train")
    return model


def _tuned(kind: str) -> Build:
    def build(backbone: Backbone, dataset: Dataset, run: RunConfig) -> PromptModel:
        task = resolve_verbalizer(backbone, dataset, run.task)  # auto: chosen words
        try:
            return TunedModel(backbone, task_config_for(dataset, task), TuneConfig(kind=kind))
        except ConfigError as exc:  # e.g. full fine-tuning of quantized weights
            raise NotApplicable(str(exc)) from None

    return build


UNIT_KINDS: dict[str, Build] = {
    ZERO_SHOT: _zero_shot,
    HEAD_ONLY: _head_only,
    "lora": _tuned("lora"),
    "full": _tuned("full"),
}


def registered(name: str) -> Build:
    """A registered prompt method, with the run's options when the run names it."""

    def build(backbone: Backbone, dataset: Dataset, run: RunConfig) -> PromptModel:
        method = run.method if run.method.get("name") == name else {"name": name}
        try:
            return build_model(backbone, dataset, method, run.task)
        except ConfigError as exc:  # e.g. a text method on an image backbone
            raise NotApplicable(str(exc)) from None

    return build


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


def has_seed(method: str) -> bool:
    """Whether a registered prompt method takes a `seed` option (its init's seed)."""
    if method not in available_methods():
        return False
    return "seed" in {f.name for f in dataclasses.fields(method_config_class(method))}


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """torch's RNG seeded by `seed` inside the block and restored after it (None: as is)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# train keys that change how a run goes, not what it learns or how it is scored
_NOT_RECORDED = ("overwrite", "force_resume", "device", "gradient_checkpointing", "eval_batch_size")


def recorded(config: RunConfig, *, test_limit: int, seed_init: bool) -> dict[str, Any]:
    """What a finished unit must share with this compare to be read back (`seed_init`
    and `train.head_lr` only when set, so units from before those options still read back)."""
    values = config.to_dict()
    values.pop("out")
    values.pop("baseline", None)
    for key in _NOT_RECORDED:
        values["train"].pop(key, None)
    if values["train"].get("head_lr") is None:
        values["train"].pop("head_lr", None)
    seeded = {"seed_init": True} if seed_init else {}
    return {**values, "test_limit": test_limit, **seeded}


def read_back(done: Path, recorded: dict[str, Any]) -> dict[str, Any]:
    row = json.loads(done.read_text(encoding="utf-8"))
    if row.get("config") != recorded:
        before, now = _flat(row.get("config") or {}), _flat(recorded)
        keys = sorted(k for k in {*before, *now} if before.get(k, "-") != now.get(k, "-"))
        said = ", ".join(f"{k} was {before.get(k, '-')}, now {now.get(k, '-')}" for k in keys)
        raise ConfigError(
            f"{done.parent}: this unit was run with other settings ({', '.join(keys)}); "
            f"{said}; use another --out, or --overwrite to run every unit again"
        )
    return row


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.03}} -> {"train.lr": 0.03}: a refusal names the setting."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        flat.update(_flat(value, name + ".") if isinstance(value, dict) else {name: value})
    return flat
