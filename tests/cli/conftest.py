"""A tiny backbone saved as an HF folder, argv factories and stand-ins shared by the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from softprompt import api, backbones
from softprompt import model as model_module
from softprompt.recipes import run as recipe_run


@pytest.fixture(scope="session")
def tiny_backbone_folder(llama_folder) -> Path:
    return llama_folder


@pytest.fixture
def train_argv(tiny_backbone_folder, small_csv):
    """train_argv(out, *extra) -> argv of a 2-step soft-prompt run on the tiny backbone."""

    def _make(out: Path, *extra: str) -> list[str]:
        return ["train", "--backbone", str(tiny_backbone_folder), "--dataset", str(small_csv),
                "--n-tokens", "2", "--steps", "2", "--eval-every", "2", "--batch-size", "4",
                "--lr", "0.1", "--no-baseline", "--template", "review : {text} sentiment :",
                "--out", str(out), *extra]  # fmt: skip

    return _make


@pytest.fixture
def stand_in(monkeypatch):
    """stand_in(name, value): replace `name` wherever a command looks it up: the run
    recipe, the prompt loaders (softprompt.model), the backbones package (import-peft)
    and the API facade, so a test patches one name instead of guessing its importer."""

    def _replace(name: str, value) -> None:
        for module in (api, recipe_run, model_module, backbones):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, value)

    return _replace


@pytest.fixture
def nothing_loads(stand_in):
    """Fail the test if a model or dataset is loaded: config and `--out` problems must be
    reported before any model work."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model or dataset was loaded before the inputs were checked")

    stand_in("load_backbone", refuse)
    stand_in("load_data", refuse)
