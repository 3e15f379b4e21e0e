"""Issue 21's report and run polish: per-class tables, a confusion matrix, the config and
date in report.md / report.json, a collapse to one class said out loud, the zero-shot
row's absence on encoder runs explained."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from softprompt import cli
from softprompt.recipes.report import class_report, collapse_warnings, collapsed_class


def test_class_report_counts_per_class_and_the_confusion_matrix():
    classes = class_report(["a", "b", "c"], ["a", "a", "b", "c"], ["a", "b", "b", "b"])
    assert classes["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    a, b, c = (classes["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (1.0, 0.5, 2)
    assert b["precision"] == pytest.approx(1 / 3) and b["recall"] == 1.0
    assert c["f1"] == 0.0 and c["support"] == 1
    assert collapsed_class(classes) is None


def test_a_collapse_to_one_class_is_named():
    classes = class_report(["neg", "pos"], ["neg", "pos", "pos"], ["pos", "pos", "pos"])
    assert collapsed_class(classes) == "pos"
    lines = collapse_warnings([{"task": "", "name": "soft-prompt", "classes": classes}])
    assert len(lines) == 1 and "'pos' for every test row" in lines[0]
    assert not collapse_warnings([{"name": "zero-shot (template)", "classes": classes}])


@pytest.fixture(scope="module")
def run_out(tiny_backbone_folder, small_csv, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run") / "out"
    argv = ["train", "--backbone", str(tiny_backbone_folder), "--dataset", str(small_csv),
            "--method", "soft-prompt", "--n-tokens", "2", "--steps", "2", "--batch-size", "4",
            "--lr", "0.1", "--template", "review : {text} sentiment :", "--out", str(out)]  # fmt: skip
    return out, argv


def test_report_has_per_class_tables_confusion_config_and_date(run_out, capsys):
    out, argv = run_out
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["date"] and report["config"]["train"]["steps"] == 2
    for row in report["rows"]:
        labels = row["classes"]["labels"]
        assert set(row["classes"]["per_class"]) == set(labels)
        assert sum(map(sum, row["classes"]["confusion"])) == row["examples"]
        assert "scores" not in row
    text = (out / "report.md").read_text()
    assert "| class | precision | recall | F1 | support |" in text
    assert "confusion matrix (rows: gold, columns: predicted)" in text
    assert "date: " in text and '"steps": 2' in text
    assert "confusion matrix" not in stdout  # stdout keeps to the table and its notes
    trained = [r for r in report["rows"] if not r["name"].startswith("zero-shot")]
    collapsed = [r for r in trained if collapsed_class(r["classes"])]
    assert len(report["notes"]) == len(collapsed)
    for line in report["notes"]:
        assert line in text and line in stdout


def test_encoder_run_says_why_there_is_no_zero_shot_row(bert_folder, small_csv, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", "--backbone", str(bert_folder), "--dataset", str(small_csv),
            "--method", "soft-prompt", "--n-tokens", "2", "--steps", "1", "--batch-size", "4",
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert not any(r["name"].startswith("zero-shot") for r in report["rows"])  # linear head
    assert any(n.startswith("no zero-shot row") for n in report["notes"])
    assert "no zero-shot row" in stdout


# --- curves ------------------------------------------------------------------------------


def _history(tasks: list[str], key: str | None = "accuracy") -> list[dict]:
    records = [{"kind": "train", "step": s, "loss": 1.0 / s} for s in range(1, 7)]
    for s, score in [(2, 0.5), (4, 0.8), (6, 0.7)]:
        for task in tasks:
            record = {
                "kind": "eval",
                "step": s,
                "loss": 1 - score,
                **({"task": task} if task else {}),
            }
            records.append({**record, **({key: score} if key else {})})
    return records


def _labels(axes) -> list[str]:
    return [line.get_label() for line in axes.get_lines()]


def test_curves_have_a_title_the_best_step_zero_shot_and_integer_ticks():
    from matplotlib.ticker import MaxNLocator

    from softprompt.plot import curves_figure

    fig = curves_figure(_history([""]), title="soft-prompt on toy.csv", zero_shot={"": 0.55})
    loss, score = fig.axes
    assert fig._suptitle.get_text() == "soft-prompt on toy.csv"
    assert "best step (4)" in _labels(loss) and "best step (4)" in _labels(score)
    assert "zero-shot" in _labels(score)
    assert all(isinstance(a.xaxis.get_major_locator(), MaxNLocator) for a in fig.axes)
    assert all(float(t).is_integer() for t in loss.get_xticks())


def test_curves_draw_one_line_per_task_and_no_empty_panel_for_generation():
    from softprompt.plot import best_steps, curves_figure

    fig = curves_figure(_history(["sent", "topic"]), zero_shot={"sent": 0.5, "topic": 0.4})
    score = fig.axes[1]
    assert {"val accuracy sent", "val accuracy topic", "zero-shot sent", "zero-shot topic"} <= set(
        _labels(score)
    )
    assert best_steps([r for r in _history(["a"]) if r["kind"] == "eval"]) == {"a": 4}
    generation = curves_figure(_history([""], key=None))
    assert len(generation.axes) == 1  # loss only: nothing to score, no blank panel
    assert "best step (4)" in _labels(generation.axes[0])  # lowest validation loss


def test_the_run_redraws_its_curves_with_a_title_and_zero_shot(run_out, monkeypatch):
    from softprompt.recipes import run as recipe_run

    out, argv = run_out
    seen = {}
    monkeypatch.setattr(recipe_run, "plot_curves", lambda h, p, **kw: seen.update(kw, path=p))
    assert cli.main([*argv[:-1], str(out.parent / "again")]) == 0
    assert seen["title"] == "soft-prompt on toy.csv (tiny-llama)"
    assert set(seen["zero_shot"]) == {""} and seen["path"].name == "curves.png"


# --- quiet pipes, one --device default ---------------------------------------------------

PIPE_CLOSED = """
import os, sys
read, write = os.pipe()
os.close(read)  # the reader is gone, as after `| head -1`
os.dup2(write, 1)
from softprompt import cli
sys.exit(cli.main(["methods"]))
"""


def test_a_closed_stdout_pipe_exits_quietly():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", PIPE_CLOSED], capture_output=True, text=True, timeout=120
    )
    assert "BrokenPipe" not in done.stderr and "Broken pipe" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.returncode == 141, done.stderr


def _default(command: str, flag: str) -> str:
    parser = cli.build_parser()
    for action in parser._subparsers._group_actions[0].choices[command]._actions:
        if flag in action.option_strings:
            return action.default
    raise AssertionError(f"{command} has no {flag}")


def test_train_and_serve_share_the_device_default():
    from softprompt.config import RunConfig

    train = RunConfig().train.device  # train's flag defaults to None: the config decides
    assert train == cli.FLAG_DEFAULTS["train.device"] == _default("serve", "--device") == "auto"


# --- the lock file ---------------------------------------------------------------------


def test_a_finished_run_removes_its_lock_file(run_out):
    out, argv = run_out
    out = out.parent / "lock-check"
    assert cli.main([*argv[:-1], str(out)]) == 0
    assert (out / "report.md").is_file() and not (out / ".softprompt.lock").exists()


def test_the_lock_file_goes_only_if_it_is_ours(tmp_path):
    from softprompt.train import run_dir

    lock_file = tmp_path / run_dir.LOCK_FILE
    with run_dir.lock(tmp_path):
        with run_dir.lock(tmp_path):  # re-entrant: the inner release keeps it
            pass
        assert lock_file.read_text().strip() == str(os.getpid())
    assert not lock_file.exists()
    with run_dir.lock(tmp_path):
        lock_file.unlink()  # someone else's file now stands at the path
        lock_file.write_text("99999\n")
    assert lock_file.read_text() == "99999\n"


# --- store add of an un-exported prompt ------------------------------------------------


@pytest.mark.parametrize(
    "method,options,hinted",
    [
        ("p-tuning", {"n_tokens": 2}, "P-tuning encoder"),
        ("prefix-tuning", {"n_tokens": 2}, "prefix MLP"),
        ("prefix-tuning", {"n_tokens": 2, "reparameterize": False}, None),
        ("soft-prompt", {"n_tokens": 2}, None),
    ],
)
def test_store_add_suggests_export_for_training_only_parts(
    llama, tmp_path, capsys, method, options, hinted
):
    from softprompt.model import PromptModel
    from softprompt.tasks import TaskConfig

    task = TaskConfig(labels=["negative", "positive"], template="review : {text} :")
    path = PromptModel(llama, task, method=method, method_options=options).save(
        tmp_path / "p.safetensors"
    )
    code = cli.main(["store", "--store", str(tmp_path / "store"), "add", "movie", str(path)])
    out, err = capsys.readouterr()
    assert code == 0 and out.startswith("movie@1: ")  # stored: a hint, not a refusal
    if hinted is None:
        assert "hint" not in err
    else:
        assert hinted in err and f"softprompt export {path} --out" in err


# --- no weight-loading bars --------------------------------------------------------------


@pytest.fixture
def bars_on():
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    yield hf_logging
    hf_logging.enable_progress_bar()  # as the library default leaves them for other tests


def test_the_cli_shows_no_weight_loading_bars(run_out, capsys, bars_on):
    from huggingface_hub import utils as hub_utils

    out, argv = run_out
    assert cli.main([*argv[:-1], str(out.parent / "quiet")]) == 0
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "Loading checkpoint" not in err, err
    assert not bars_on.is_progress_bar_enabled()
    assert not hub_utils.are_progress_bars_disabled()  # downloads keep their bar


def test_a_collapsed_run_says_so_in_the_report_and_on_stdout(run_out, capsys, monkeypatch):
    from softprompt.recipes import run as recipe_run

    real = recipe_run.class_report
    monkeypatch.setattr(  # every prediction the first label: a collapse, as at a high lr
        recipe_run,
        "class_report",
        lambda labels, gold, _: real(labels, gold, [labels[0]] * len(gold)),
    )
    out, argv = run_out
    out = out.parent / "collapsed"
    assert cli.main([*argv[:-1], str(out)]) == 0
    stdout = capsys.readouterr().out
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert len(notes) == 1 and "soft-prompt" in notes[0] and "collapsed to one class" in notes[0]
    assert notes[0] in stdout and notes[0] in (out / "report.md").read_text()
    assert notes[0].startswith("warning: soft-prompt")  # one task: no data path in front
