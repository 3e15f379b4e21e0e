"""A tiny backbone saved as an HF folder and a small CSV, shared by the CLI tests."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_backbone_folder(llama_folder) -> Path:
    return llama_folder


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory) -> Path:
    rows = [("the movie was good and fun", "positive"), ("a bad and boring plot", "negative")]
    path = tmp_path_factory.mktemp("data") / "toy.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(40):
            text, label = rows[i % 2]
            writer.writerow([f"{text} {' '.join(['really'] * (i % 5))} {i}", label])
    return path


@pytest.fixture
def train_argv(tiny_backbone_folder, small_csv):
    """train_argv(out, *extra) -> argv of a 2-step soft-prompt run on the tiny backbone."""

    def _make(out: Path, *extra: str) -> list[str]:
        return ["train", "--backbone", str(tiny_backbone_folder), "--dataset", str(small_csv),
                "--n-tokens", "2", "--steps", "2", "--eval-every", "2", "--batch-size", "4",
                "--lr", "0.1", "--no-baseline", "--template", "review : {text} sentiment :",
                "--out", str(out), *extra]  # fmt: skip

    return _make
