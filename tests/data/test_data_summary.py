"""The split summary `softprompt train` prints before any model work."""

from __future__ import annotations

import pytest

from softprompt import api, cli
from softprompt.data import Dataset, Example, split_summary
from softprompt.train import run_dir


def _dataset(task: str = "classification", labels=("neg", "pos")) -> Dataset:
    train = [Example(f"t{i}", "pos" if i % 3 else "neg") for i in range(9)]
    return Dataset(
        name="toy",
        task=task,
        labels=list(labels),
        train=train,
        validation=[Example("v", "pos")],
        test=[Example("a", "neg"), Example("b", "pos")],
    )


def test_rows_per_split_and_per_class():
    assert split_summary(_dataset()).splitlines() == [
        "data toy: classification, 2 classes",
        "class  train  validation  test",
        "neg        3           0     1",
        "pos        6           1     1",
        "all        9           1     2",
    ]


def test_a_class_without_train_rows_is_named():
    text = split_summary(_dataset(labels=("neg", "pos", "meh")), "task-a")
    assert text.startswith("data task-a: classification, 3 classes")
    assert "\nmeh        0           0     0\n" in text
    assert text.endswith("note: no train rows for 'meh'")


def test_generation_shows_row_counts_only():
    assert split_summary(_dataset("generation", labels=())).splitlines() == [
        "data toy: generation",
        "     train  validation  test",
        "all      9           1     2",
    ]


def test_long_and_multiline_labels_stay_on_one_short_line():
    label = "a very long label\nthat goes on and on and on"
    data = _dataset(labels=(label, "pos"))
    row = split_summary(data).splitlines()[2]
    assert row.startswith("a very long label that goes...") and "\n" not in row


class _Stop(Exception):
    """Raised by the stand-in for run(): the test only needs what came before it."""


@pytest.fixture
def toy_csv(write):
    rows = "".join(f"text {i},{'pos' if i % 4 else 'neg'}\n" for i in range(40))
    return write("toy.csv", "text,label\n" + rows)


def test_train_prints_the_summary_before_any_model_work(capsys, monkeypatch, toy_csv, tmp_path):
    seen = {}

    def fake_run(config, resume=False):
        seen["printed"] = capsys.readouterr().out  # what the user saw before run() began
        raise _Stop

    monkeypatch.setattr(api, "run", fake_run)
    with pytest.raises(_Stop):
        cli.main(["train", "--dataset", str(toy_csv), "--out", str(tmp_path / "run")])
    assert seen["printed"].splitlines() == [
        "data toy: classification, 2 classes",
        "class  train  validation  test",
        "neg        8           1     1",
        "pos       24           3     3",
        "all       32           4     4",
        "",
    ]


def test_resume_prints_no_summary(capsys, monkeypatch, toy_csv, tmp_path):
    def fake_run(config, resume=False):
        raise _Stop

    monkeypatch.setattr(api, "run", fake_run)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / run_dir.CHECKPOINT).write_bytes(b"")  # resume's own check passes
    with pytest.raises(_Stop):
        cli.main(["train", "--dataset", str(toy_csv), "--out", str(tmp_path / "run"), "--resume"])
    assert "classes" not in capsys.readouterr().out


def test_out_problems_come_before_the_summary(capsys, monkeypatch, toy_csv, tmp_path):
    """A bad --out is named before any data is read (the summary reads the data)."""
    (tmp_path / "file").write_text("not a folder\n")
    monkeypatch.setattr(api, "load_data", lambda *a, **k: pytest.fail("read data first"))
    code = cli.main(["train", "--dataset", str(toy_csv), "--out", str(tmp_path / "file")])
    assert code == 2 and "is a file, not a folder" in capsys.readouterr().err
