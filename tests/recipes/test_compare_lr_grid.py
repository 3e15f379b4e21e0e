"""`compare --lr-grid`: each method's lr chosen on validation (issue 22: at 30 steps the
recommended lrs fixed movie-sentiment but hurt LoRA on election-tweets and wnut16).
The first seed trains at every lr of the grid, the best validation figure wins, the
other seeds train at it; the units not chosen are never scored on the test split."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from pathlib import Path

import pytest

from softprompt import cli
from softprompt.config import build_run_config
from softprompt.recipes import compare as compare_module
from softprompt.recipes.compare import CompareConfig, compare
from softprompt.recipes.compare_lr import Unit, choose, grid_lr

# a head-only probe on the tiny encoder learns this in 10 steps at lr 0.05 to 0.1
STEPS = {"steps": 10, "eval_every": 5, "batch_size": 8, "eval_examples": 0, "lr": 0.1,
         "warmup_steps": 0}  # fmt: skip
USELESS, USEFUL = 1e-6, 0.5  # x 0.1: 1e-7 leaves the head where it started; 0.05 learns


@pytest.fixture(scope="module")
def words_csv(tmp_path_factory) -> Path:
    """120 rows of six sentiment words each (tiny-vocabulary words: an unknown word
    would be the same token for both classes)."""
    rng = random.Random(0)
    good = "good great excellent amazing best love".split()
    bad = "bad terrible awful worst hate boring".split()
    path = tmp_path_factory.mktemp("grid") / "words.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(120):
            label, words = ("positive", good) if i % 2 else ("negative", bad)
            writer.writerow([" ".join(rng.choices(words, k=6)), label])
    return path


def _config(backbone: Path, data: Path, out: Path, grid: list[float], **extra) -> CompareConfig:
    run = build_run_config(
        {"backbone": str(backbone), "data": str(data), "train": STEPS, "out": str(out)}
    )
    methods = extra.pop("methods", ["zero-shot", "head-only"])
    return CompareConfig(run, methods=methods, seeds=[0, 1], lr_grid=grid, **extra)


def _table(report) -> list[tuple]:
    keep = ("method", "mean", "sd", "min", "max", "seeds", "trainable_parameters", "skipped", "lr")
    return [tuple(s.get(k) for k in keep) for s in report.summary]


def _unit(out: Path, name: str) -> dict:
    return json.loads((out / "units" / name / "unit.json").read_text())


def test_the_grid_trains_the_first_seed_at_each_lr_and_keeps_the_best_on_validation(
    bert_folder, words_csv, tmp_path, monkeypatch
):
    scored = []

    def spy(model, rows, **kwargs):
        scored.append(len(rows))
        return evaluate(model, rows, **kwargs)

    evaluate = compare_module.evaluate
    monkeypatch.setattr(compare_module, "evaluate", spy)
    out = tmp_path / "g"
    report = compare(_config(bert_folder, words_csv, out, [USELESS, USEFUL]), progress=False)
    units = sorted(p.name for p in (out / "units").iterdir())
    assert units == ["head-only-s0-lr0.05", "head-only-s0-lr1e-07", "head-only-s1-lr0.05",
                     "zero-shot-s0"]  # fmt: skip
    tried = [_unit(out, "head-only-s0-lr1e-07"), _unit(out, "head-only-s0-lr0.05")]
    figures = [t["validation_metric"] for t in tried]
    assert figures[1] > figures[0] and choose(tried) == figures.index(max(figures)) == 1
    assert [t["config"]["train"]["lr"] for t in tried] == [1e-7, 0.05]
    assert "accuracy" not in tried[0] and "test_rows" not in tried[0]  # lost: never tested
    assert (
        "accuracy" in tried[1]
        and _unit(out, "head-only-s1-lr0.05")["config"]["train"]["lr"] == 0.05
    )
    assert len(scored) == 2  # the chosen unit and seed 1; zero-shot is n/a, not gridded
    summary = {s["method"]: s for s in report.summary}
    assert summary["head-only"]["seeds"] == 2 and summary["head-only"]["lr"] == 0.05
    saved = json.loads((out / "compare.json").read_text())
    assert saved["config"]["lr_grid"] == [USELESS, USEFUL]
    grid = saved["lr_grid"]["head-only"]
    assert grid["chosen_lr"] == 0.05 and list(grid) == ["chosen_lr", "tried"]
    assert [(t["lr"], t["validation_metric"]) for t in grid["tried"]] == [
        (1e-7, figures[0]),
        (0.05, figures[1]),
    ]
    md = (out / "compare.md").read_text()
    assert "## lr grid" in md
    line = next(x for x in md.splitlines() if x.startswith("| head-only") and "**" in x)
    assert line == (
        f"| head-only (linear probe) | 0.05 | 1e-07: {figures[0]:.3f}, **0.05: {figures[1]:.3f}** |"
    )


def test_a_grid_killed_midway_resumes_to_the_same_table(
    bert_folder, words_csv, tmp_path, train_calls
):
    whole = compare(_config(bert_folder, words_csv, tmp_path / "a", [USELESS, USEFUL]),
                    progress=False)  # fmt: skip
    config = _config(bert_folder, words_csv, tmp_path / "b", [USELESS, USEFUL])
    # zero-shot (n/a) and the first grid unit finish; the second stops after 6 of 10 steps
    partial = compare(config, progress=False, stop_at=(2, 6))
    assert not partial.complete and not (tmp_path / "b" / "compare.md").exists()
    stopped = tmp_path / "b" / "units" / "head-only-s0-lr0.05"
    assert (stopped / "checkpoint.safetensors").is_file() and not (stopped / "unit.json").exists()
    calls = train_calls
    calls.clear()  # the rerun's units only
    resumed = compare(config, progress=False)
    assert [c[:2] for c in calls] == [("head-only-s0-lr0.05", True), ("head-only-s1-lr0.05", False)]
    assert resumed.complete and _table(resumed) == _table(whole)
    assert resumed.grid == whole.grid
    assert compare(config, progress=False).grid == whole.grid and len(calls) == 2  # read back


def test_factor_1_is_the_plain_unit_so_a_compare_run_before_the_grid_reads_back(
    bert_folder, words_csv, tmp_path, train_calls
):
    out = tmp_path / "o"
    plain = _config(bert_folder, words_csv, out, [], methods=["head-only"])
    compare(dataclasses.replace(plain, seeds=[0]), progress=False)
    done = out / "units" / "head-only-s0" / "unit.json"
    old = json.loads(done.read_text())
    figure = old.pop("validation_metric")  # as a unit.json written before the grid
    done.write_text(json.dumps(old))
    calls = train_calls
    calls.clear()  # the rerun's units only
    report = compare(dataclasses.replace(plain, lr_grid=[1, USELESS]), progress=False)
    assert [c.unit for c in calls] == [
        "head-only-s0-lr1e-07",
        "head-only-s1",
    ]  # head-only-s0 read back
    tried = report.grid["head-only"]["tried"]
    assert tried[0] == {"lr": 0.1, "unit": "head-only-s0", "validation_metric": figure}
    assert report.grid["head-only"]["chosen_lr"] == 0.1


def test_ties_go_to_the_factor_listed_first_and_a_diverged_unit_never_wins():
    assert choose([{"validation_metric": 0.5}, {"validation_metric": 0.7},
                   {"validation_metric": 0.7}]) == 1  # fmt: skip
    assert choose([{"failed": "diverged"}, {"validation_metric": -3.0}]) == 1
    assert grid_lr(0.03, 0.3) == 0.009 and grid_lr(0.03, 1) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0.3,x", "--lr-grid: cannot read '0.3,x'; give factors of each method's lr"),
        (",", "--lr-grid: cannot read ','"),
        ("0.3,0", "--lr-grid: factors must be finite numbers > 0, got 0"),
        ("-1", "--lr-grid: factors must be finite numbers > 0, got -1"),
        ("nan", "--lr-grid: factors must be finite numbers > 0, got nan"),
        ("inf,1", "--lr-grid: factors must be finite numbers > 0, got inf"),
        ("1,3,1", "--lr-grid: name each factor once (e.g. 0.3,1,3)"),
    ],
)
def test_bad_lr_grid_is_one_line(value, message, tmp_path, capsys):
    code = cli.main(["compare", "--out", str(tmp_path / "x"), "--lr-grid", value])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_an_lr_grid_that_overflows_a_methods_lr_is_refused_before_training(tmp_path, capsys):
    """Before: each factor was finite, so 10 x 1e308 (inf) was refused only by the loop,
    after the units before it had trained."""
    argv = ["compare", "--out", str(tmp_path / "x"), "--methods", "soft-prompt", "--lr", "10",
            "--lr-grid", "1,1e308"]  # fmt: skip
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--lr-grid: soft-prompt's lr 10 x 1e+308 is inf, not a usable lr" in err
    assert not (tmp_path / "x").exists()


def test_cli_lr_grid(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(compare_module, "compare", lambda config: seen.append(config) or 1 / 0)
    argv = ["compare", "--out", str(tmp_path / "o"), "--lr-grid", "0.3,1,3", "--head-lr", "0.02"]
    with pytest.raises(ZeroDivisionError):
        cli.main(argv)
    assert seen[0].lr_grid == [0.3, 1.0, 3.0] and seen[0].run.train.head_lr == 0.02


def test_a_head_beside_a_gridded_method_keeps_head_onlys_lr(tmp_path):
    run = build_run_config({"train": STEPS, "out": str(tmp_path / "o")})
    config = CompareConfig(run, methods=["head-only", "lora"], seeds=[0], per_method_lr=True,
                           lr_grid=[1, 10])  # fmt: skip
    lora = compare_module.unit_config(config, Unit("lora", 0, 0.01), tmp_path, has_head=True)
    assert (lora.train.lr, lora.train.head_lr) == (0.01, 0.01)  # head-only's 1e-2, unscaled
    probe = compare_module.unit_config(config, Unit("head-only", 0, 0.1), tmp_path, has_head=True)
    assert (probe.train.lr, probe.train.head_lr) == (0.1, None)  # its grid scales its lr
