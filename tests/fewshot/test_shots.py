"""The k-shot regime (data/shots.py): seeded, balanced, validation never in training."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from toydata import toy_examples

from softprompt import cli
from softprompt.config import build_run_config
from softprompt.data import Dataset, Example
from softprompt.data.shots import few_shot_dataset, sample_shots
from softprompt.errors import ConfigError, DataError
from softprompt.model import load_prompt_meta
from softprompt.train.loop import cut_note

LABELS = ["a", "b", "c"]


def _rows(per_class: int = 20) -> list[Example]:
    return [Example(f"text {label} {i}", label) for i in range(per_class) for label in LABELS]


def test_shots_are_balanced_and_validation_the_same_size():
    shots = sample_shots(_rows(), LABELS, 4, seed=0)
    assert Counter(e.label for e in shots.train) == {"a": 4, "b": 4, "c": 4}
    assert Counter(e.label for e in shots.validation) == {"a": 4, "b": 4, "c": 4}
    assert len(shots.unlabelled) == 60 - 24


def test_shots_are_seeded():
    assert sample_shots(_rows(), LABELS, 4, seed=3) == sample_shots(_rows(), LABELS, 4, seed=3)
    assert (
        sample_shots(_rows(), LABELS, 4, seed=3).train
        != sample_shots(_rows(), LABELS, 4, seed=4).train
    )


def test_validation_and_unlabelled_never_share_a_text_with_training():
    rows = _rows() + [Example("text a 0", "a"), Example("text b 1", "b")]  # duplicates
    for seed in range(10):
        shots = sample_shots(rows, LABELS, 5, seed=seed)
        train = {e.text for e in shots.train}
        assert not train & {e.text for e in shots.validation}
        assert not train & set(shots.unlabelled)
        assert len(train) == len(shots.train)  # one row per distinct text


def test_one_class_keeps_its_sample_when_another_class_changes():
    more = _rows() + [Example(f"extra {i}", "c") for i in range(7)]
    first, second = sample_shots(_rows(), LABELS, 3, seed=1), sample_shots(more, LABELS, 3, 1)
    assert {e for e in first.train if e.label == "a"} == {e for e in second.train if e.label == "a"}


def test_too_few_rows_for_a_class_names_it():
    rows = [e for e in _rows() if e.label != "b"] + [Example("only b", "b")]
    with pytest.raises(DataError, match=r"'b': 1.*lower --shots"):
        sample_shots(rows, LABELS, 2)


def test_few_shot_dataset_keeps_the_test_split():
    data = Dataset("d", "classification", LABELS, _rows(), [Example("v", "a")], _rows(2))
    few = few_shot_dataset(data, 2, seed=0)
    assert few.test == data.test and len(few.train) == len(few.validation) == 6
    assert few_shot_dataset(data, None) is data


def test_generation_data_is_refused():
    data = Dataset("g", "generation", [], _rows(), [], [])
    with pytest.raises(ConfigError, match="classification dataset"):
        few_shot_dataset(data, 2)


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_shots_value_is_one_line(bad):
    with pytest.raises(ConfigError, match=r"data.shots: must be a whole number >= 1"):
        build_run_config({"data": {"shots": bad}})


def test_config_keys_reach_the_data_config():
    config = build_run_config({"data": {"shots": 8, "seed": 3}})
    assert (config.data.shots, config.data.seed) == (8, 3)


def test_cli_trains_dart_in_the_k_shot_regime_with_auto_words(capsys, tmp_path, llama_folder):
    path = tmp_path / "toy.csv"
    rows = [(e.text, e.label) for e in toy_examples(40, seed=1)]
    path.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    out = tmp_path / "run"
    code = cli.main(["train", "--backbone", str(llama_folder), "--dataset", str(path),
                     "--shots", "4", "--data-seed", "2", "--verbalizer", "auto",
                     "--method", "dart", "--n-tokens", "2",
                     "--template", "review : {p:2} {text} sentiment :", "--steps", "2",
                     "--eval-every", "2", "--batch-size", "4", "--no-baseline", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "label words chosen on 8 training rows" in printed
    meta = load_prompt_meta(out / "prompt.safetensors")
    assert set(meta["task"]["verbalizer"]) == {"negative", "positive"}
    assert meta["tensors"]["method.labels"][0] == 2
    run = json.loads((out / "report.json").read_text())["config"]
    assert (run["data"]["shots"], run["data"]["seed"]) == (4, 2)


def test_cli_bad_shots_flag_is_one_line(capsys):
    assert cli.main(["train", "--shots", "0"]) == 2
    err = capsys.readouterr().err
    assert "data.shots: must be a whole number >= 1" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--data-seed", "x"], "--data-seed: cannot read"),
        (["--shots", "two"], "--shots: cannot read"),
        (["--verbalizer", "auto:0"], "task.verbalizer: 'auto:0' is not a word mapping"),
    ],
)
def test_cli_bad_few_shot_flags_are_one_line(capsys, argv, expected):
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


def test_any_first_n_validation_rows_are_balanced_per_class():
    """train.eval_examples keeps the first N validation rows: in the k-shot regime they
    cover min(N, C) classes, N // C or one more each (the old shuffled order, cut to 20 of
    newsgroups20's 320 rows, could drop whole classes)."""
    labels = [f"c{i}" for i in range(6)]
    rows = [Example(f"text {label} {i}", label) for i in range(20) for label in labels]
    for seed in range(5):
        validation = sample_shots(rows, labels, 8, seed=seed).validation
        for n in range(1, len(validation) + 1):
            counts = Counter(e.label for e in validation[:n])
            assert len(counts) == min(n, len(labels)), (seed, n)
            assert max(counts.values()) - min(counts.values()) <= 1, (seed, n)


def test_validation_rounds_are_seeded_and_not_in_one_class_order():
    firsts = {
        tuple(e.label for e in sample_shots(_rows(), LABELS, 4, s).validation[:3]) for s in range(8)
    }
    assert len(firsts) > 1  # each round's class order is drawn, not always a, b, c
    assert sample_shots(_rows(), LABELS, 4, 5) == sample_shots(_rows(), LABELS, 4, 5)


def test_k_shot_runs_validate_on_the_whole_k_shot_set_unless_told_otherwise():
    assert build_run_config({"data": {"shots": 16}}).train.eval_examples == 0
    told = {"data": {"shots": 16}, "train": {"eval_examples": 20}}
    assert build_run_config(told).train.eval_examples == 20
    assert build_run_config({}).train.eval_examples == 300  # a full validation split: capped
    mixed = {"tasks": [{"data": {"source": "a.csv", "shots": 4}}, {"data": "b.csv"}]}
    assert build_run_config(mixed).train.eval_examples == 300


def test_cli_k_shot_run_validates_on_every_row_or_says_what_it_cuts(capsys, tmp_path, llama_folder):
    path = tmp_path / "toy.csv"
    rows = [(e.text, e.label) for e in toy_examples(40, seed=1)]
    path.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    base = ["train", "--backbone", str(llama_folder), "--dataset", str(path), "--shots", "4",
            "--n-tokens", "2", "--steps", "2", "--eval-every", "2", "--batch-size", "4",
            "--no-baseline"]  # fmt: skip
    assert cli.main([*base, "--out", str(tmp_path / "all")]) == 0
    run = json.loads((tmp_path / "all" / "report.json").read_text())["config"]
    assert run["train"]["eval_examples"] == 0 and "eval_examples" not in capsys.readouterr().err
    assert cli.main([*base, "--eval-examples", "3", "--out", str(tmp_path / "cut")]) == 0
    err = capsys.readouterr().err
    assert "train.eval_examples=3: task " in err
    assert (
        "validated on the first 3 of its 8 validation rows (2 of 2 classes, 1 to 2 rows each)"
        in err
    )


def test_cut_note_shows_a_cap_that_drops_classes_of_a_split_sorted_by_label():
    sorted_rows = [Example(f"v {label} {i}", label) for label in LABELS for i in range(4)]
    data = Dataset("d", "classification", LABELS, _rows(), sorted_rows, [])
    assert cut_note("d", data, 2) == (
        "train.eval_examples=2: task 'd' is validated on the first 2 of its 12 validation "
        "rows (1 of 3 classes, 2 rows each); set it to 0 to score them all"
    )
