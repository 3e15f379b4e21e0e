"""`softprompt train / eval / predict --backbone <T5 or BART folder>`: a tiny random
encoder-decoder saved as the HF folder a user brings, classification by label words on
the decoder and a generation task, through the normal command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from softprompt import cli
from softprompt.backbones.tiny import tiny_seq2seq
from softprompt.model import load_prompt_meta


@pytest.fixture(scope="module", params=["t5", "bart"])
def folder(request, tmp_path_factory) -> Path:
    backbone = tiny_seq2seq(request.param)
    path = tmp_path_factory.mktemp("backbone") / f"tiny-{request.param}"
    backbone.model.save_pretrained(path)
    backbone.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory) -> Path:
    """Text -> short target text, for a generation run."""
    rows = [("the movie was good", "great film"), ("a bad and boring plot", "awful story")]
    path = tmp_path_factory.mktemp("data") / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(24):
            text, target = rows[i % 2]
            writer.writerow([f"{text} {' '.join(['really'] * (i % 6))} {i}", target])
    return path


def _run(folder: Path, data: Path, out: Path, *extra: str) -> None:
    argv = ["train", "--backbone", str(folder), "--dataset", str(data), "--n-tokens", "3",
            "--steps", "4", "--eval-every", "2", "--batch-size", "4", "--lr", "0.1",
            "--no-baseline", "--out", str(out), *extra]  # fmt: skip
    assert cli.main(argv) == 0


@pytest.mark.parametrize("method", ["soft-prompt", "prefix-tuning"])
def test_train_classifies_by_label_words_on_the_decoder(
    folder, small_csv, tmp_path, method, capsys
):
    out = tmp_path / "run"
    _run(folder, small_csv, out, "--method", method, "--template", "review : {text}")
    meta = load_prompt_meta(out / "prompt.safetensors")
    assert meta["method"]["name"] == method and meta["task"]["kind"] == "classification"
    capsys.readouterr()
    prompt = str(out / "prompt.safetensors")
    assert cli.main(["eval", prompt, "--dataset", str(small_csv), "--split", "validation"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] > 0 and 0 <= result["accuracy"] <= 1
    assert cli.main(["predict", prompt, "a good movie", "so bad"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] in ("positive", "negative") for r in rows] == [True, True]


def test_train_a_generation_task(folder, pairs_csv, tmp_path, capsys):
    out = tmp_path / "run"
    _run(folder, pairs_csv, out, "--method", "prefix-tuning", "--task-kind", "generation")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 4 and all(loss > 0 for loss in losses)
    capsys.readouterr()
    assert cli.main(["predict", str(out / "prompt.safetensors"), "the movie was good"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert isinstance(row["text"], str)
