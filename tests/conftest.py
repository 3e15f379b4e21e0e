"""Shared fixtures for the core tests: tiny backbones, a toy dataset, model/config factories.

The tiny models are a few thousand parameters; torch's thread pool only costs time on
them (and thrashes when another job holds the CPU), so tests run single-threaded.
"""

from __future__ import annotations

import csv
import logging
import os
import traceback
import warnings
from pathlib import Path

import pytest
import torch

from softprompt.backbones import Backbone
from softprompt.backbones.tiny import tiny_bert, tiny_gpt2, tiny_llama, tiny_seq2seq
from softprompt.data import Dataset
from softprompt.model import PromptModel
from softprompt.tasks import TaskConfig
from softprompt.train import TrainConfig

torch.set_num_threads(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skip for a missing real package fails instead: scripts/setup.sh installs
    every one, so a missing package there is a broken setup, not a reason to skip."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and "not installed" in str(report.longrepr):
        report.outcome = "failed"


def _from_softprompt() -> bool:
    """Whether softprompt's own code (not a test, not PEFT) is on the current call stack."""
    return any(
        "/src/softprompt/" in frame.filename or "/site-packages/softprompt/" in frame.filename
        for frame in traceback.extract_stack()
    )


class _DeprecationLog(logging.Handler):
    def __init__(self, found: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.found = found

    def emit(self, record: logging.LogRecord) -> None:
        if "deprecated" in record.getMessage() and _from_softprompt():
            self.found.append(record.getMessage())


@pytest.fixture(autouse=True)
def no_transformers_deprecation_from_softprompt(monkeypatch):
    """Fail a test in which softprompt's own calls make transformers warn of a deprecation,
    so the next rename shows up here and not in a user's run (warnings from PEFT or from
    the tests' reference code do not count)."""
    found: list[str] = []
    original = warnings.warn

    def warn(message, category=None, stacklevel=1, *args, **kwargs):
        caller = traceback.extract_stack()[-2].filename
        deprecation = category is not None and issubclass(
            category, DeprecationWarning | FutureWarning
        )
        if deprecation and "/transformers/" in caller and _from_softprompt():
            found.append(str(message))
        return original(message, category, stacklevel + 1, *args, **kwargs)

    monkeypatch.setattr(warnings, "warn", warn)
    handler = _DeprecationLog(found)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not found, f"transformers deprecation triggered by softprompt: {found[0]}"


TINY_BUILDERS = {
    "tiny_llama": tiny_llama,
    "tiny_gpt2": tiny_gpt2,
    "tiny_bert": tiny_bert,
    "tiny_t5": lambda: tiny_seq2seq("t5"),
    "tiny_bart": lambda: tiny_seq2seq("bart"),
}
from toydata import LABELS, TEMPLATE, toy_examples  # noqa: E402,F401


@pytest.fixture(scope="session")
def backbones() -> dict[str, Backbone]:
    """One instance of each tiny backbone per session (tests must not modify them)."""
    return {name: build() for name, build in TINY_BUILDERS.items()}


@pytest.fixture(scope="session")
def llama(backbones) -> Backbone:
    return backbones["tiny_llama"]


@pytest.fixture(scope="session")
def gpt2(backbones) -> Backbone:
    return backbones["tiny_gpt2"]


@pytest.fixture(scope="session")
def bert(backbones) -> Backbone:
    return backbones["tiny_bert"]


def _saved_folder(tmp_path_factory, backbone: Backbone, name: str) -> Path:
    """A tiny backbone saved as the HF folder a user passes with --backbone."""
    folder = tmp_path_factory.mktemp("backbone") / name
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def llama_folder(tmp_path_factory, llama) -> Path:
    return _saved_folder(tmp_path_factory, llama, "tiny-llama")


@pytest.fixture(scope="session")
def bert_folder(tmp_path_factory, bert) -> Path:
    return _saved_folder(tmp_path_factory, bert, "tiny-bert")


@pytest.fixture(scope="session")
def toy_dataset() -> Dataset:
    """32 train / 8 validation / 8 test rows, two balanced labels."""
    return Dataset(
        name="toy",
        task="classification",
        labels=list(LABELS),
        train=toy_examples(32, seed=1),
        validation=toy_examples(8, seed=2),
        test=toy_examples(8, seed=3),
    )


@pytest.fixture(scope="session")
def make_model():
    """make_model(backbone, method="soft-prompt", task=None, **method_options) -> PromptModel."""

    def _make(
        backbone: Backbone,
        method: str = "soft-prompt",
        task: dict | None = None,
        **options,
    ) -> PromptModel:
        if method == "soft-prompt":
            options.setdefault("n_tokens", 4)
        task_values = {"labels": list(LABELS), "template": TEMPLATE, **(task or {})}
        return PromptModel(
            backbone, TaskConfig(**task_values), method=method, method_options=options
        )

    return _make


@pytest.fixture(scope="session")
def fast_config():
    """fast_config(**overrides) -> a TrainConfig of a few tiny steps."""

    def _make(**overrides) -> TrainConfig:
        values = dict(
            steps=4,
            batch_size=4,
            eval_every=2,
            eval_examples=8,
            eval_batch_size=8,
            warmup_steps=1,
            lr=0.1,
        )
        values.update(overrides)
        return TrainConfig(**values)

    return _make


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory) -> Path:
    """40 rows of a two-class sentiment CSV (text, label) for CLI and recipe runs."""
    rows = [("the movie was good and fun", "positive"), ("a bad and boring plot", "negative")]
    path = tmp_path_factory.mktemp("data") / "toy.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(40):
            text, label = rows[i % 2]
            writer.writerow([f"{text} {' '.join(['really'] * (i % 5))} {i}", label])
    return path
