"""Fixtures of the compare tests."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from softprompt.recipes import compare as compare_module
from softprompt.train import train


class TrainCall(NamedTuple):
    unit: str  # the unit's folder name, e.g. lora-s0-lr0.01
    resume: bool
    overwrite: bool


@pytest.fixture
def train_calls(monkeypatch) -> list[TrainCall]:
    """The units compare trains from now on, in order (each still trains for real)."""
    calls: list[TrainCall] = []

    def spy(model, dataset, config, out_dir, **kwargs):
        calls.append(TrainCall(Path(out_dir).name, kwargs["resume"], config.overwrite))
        return train(model, dataset, config, out_dir, **kwargs)

    monkeypatch.setattr(compare_module, "train", spy)
    return calls
