"""User CoNLL files: both layouts read, every bad input named, and a CLI run on one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softprompt import cli
from softprompt.data import load_dataset
from softprompt.data.conll import read_conll
from softprompt.errors import DataError

SENTENCES = [
    [("the", "O"), ("red", "B-team"), ("sox", "I-team"), ("won", "O")],
    [("we", "O"), ("saw", "O"), ("jaws", "B-film"), ("again", "O")],
    [("the", "O"), ("yankees", "B-team"), ("lost", "O")],
    [("jaws", "B-film"), ("is", "O"), ("old", "O")],
]


def _many(count: int) -> list[list[tuple[str, str]]]:
    """`count` distinct sentences (a numbered word at the end), so splits are not empty."""
    return [[*SENTENCES[i % 4], (f"n{i}", "O")] for i in range(count)]


def _write(path: Path, sentences, separator: str = "\t", docstart: bool = False) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for sentence in sentences:
        lines += [f"{word}{separator}{tag}" for word, tag in sentence] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def test_tab_and_conll2003_layouts_read_the_same(tmp_path):
    tabbed = read_conll(_write(tmp_path / "a.conll", SENTENCES))
    columns = [[(w, f"NN B-NP {t}") for w, t in s] for s in SENTENCES]
    spaced = read_conll(_write(tmp_path / "b.conll", columns, " ", docstart=True))
    assert tabbed == spaced
    assert (tabbed[0].text, tabbed[0].label) == ("the red sox won", "O B-team I-team O")


def test_a_conll_file_loads_as_a_tagging_dataset(tmp_path):
    path = _write(tmp_path / "ner.conll", _many(40))
    data = load_dataset(str(path), validation_fraction=0.1, test_fraction=0.1)
    assert data.task == "tagging"
    assert data.labels == ["O", "B-film", "I-film", "B-team", "I-team"]
    assert len(data.train) + len(data.validation) + len(data.test) == 40


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "file is empty"),
        ("-DOCSTART- -X- O\n\n", "no sentences"),
        ("the\tO\nteam\tPERSON\n", "line 2: tag 'PERSON' is not a BIO tag"),
        ("the\tO\nlonely\n", "line 2: expected a token and its tag"),
        ("the red\tO\n", "line 1: expected a token and its tag"),
    ],
)
def test_bad_conll_files_are_named(tmp_path, text, message):
    path = tmp_path / "bad.conll"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_dataset(str(path))


def test_a_tag_missing_from_train_is_named_with_its_file(tmp_path):
    train = _write(tmp_path / "train.conll", _many(10))
    test = _write(tmp_path / "test.conll", [[("paris", "B-city")]])
    with pytest.raises(DataError, match=r"test.conll: sentence at line 1: tags B-city never occur"):
        load_dataset(str(train), test=str(test))


def test_labels_and_generation_are_refused_for_conll(tmp_path):
    path = _write(tmp_path / "ner.conll", SENTENCES)
    with pytest.raises(Exception, match="tagging task"):
        load_dataset(str(path), task="generation")


def test_cli_trains_a_tagger_on_a_conll_file_and_reports_entity_f1(tmp_path, bert_folder):
    data = _write(tmp_path / "ner.conll", _many(40))
    out = tmp_path / "run"
    argv = ["train", "--backbone", str(bert_folder), "--dataset", str(data), "--method",
            "soft-prompt", "--n-tokens", "2", "--steps", "2", "--eval-every", "2",
            "--batch-size", "4", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    report = (out / "report.md").read_text()
    assert "test entity F1" in report and "test accuracy" in report
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert all("entity_f1" in row for row in rows)
