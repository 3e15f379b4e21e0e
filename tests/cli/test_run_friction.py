"""A newcomer's first runs (issue 21 items 1-3): a P-tuning template with {p:N} slots
trains from the CLI (zero-shot scores the template without its slots); a refused or
failed run leaves no folder it created; `--test-limit` bounds every test pass to a
seeded class-stratified sample and says so; the zero-shot row is scored once and kept
in the run folder; `--out OUT --resume` alone goes on with the run's own settings, and
every refusal (resume, --compare, template slots) comes before any scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softprompt import api, cli
from softprompt.data import Example
from softprompt.recipes import run as recipe_run
from softprompt.train import run_dir

SLOTS = "{p:2} review : {text} {p:1} sentiment :"


def _main(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _error(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


@pytest.fixture
def count_scoring(monkeypatch):
    """Every test-split scoring the run recipe does, as the list of row counts scored."""
    calls: list[int] = []
    real = recipe_run.evaluate

    def counted(model, examples, **kwargs):
        calls.append(len(examples))
        return real(model, examples, **kwargs)

    monkeypatch.setattr(recipe_run, "evaluate", counted)
    return calls


def _refuse_scoring(*args, **kwargs):
    raise AssertionError("scored the test split before a check that refuses the run")


@pytest.fixture
def no_scoring(monkeypatch):
    monkeypatch.setattr(recipe_run, "evaluate", _refuse_scoring)


# --- 1. P-tuning with template slots ----------------------------------------------------


def test_p_tuning_with_template_slots_trains_and_scores_zero_shot_without_them(
    capsys, tmp_path, train_argv
):
    out = tmp_path / "ptune"
    argv = train_argv(out, "--method", "p-tuning", "--n-tokens", "3", "--template", SLOTS)
    argv.remove("--no-baseline")
    code, stdout, err = _main(capsys, argv)
    assert code == 0, err
    names = [row["name"] for row in _report(out)["rows"]]
    assert names[0] == "zero-shot (template + label words, no slots)"
    assert names[1].startswith("p-tuning (best of step")
    kept = json.loads((out / recipe_run.ZERO_SHOT_FILE).read_text())
    assert [row["template"] for row in kept.values()] == ["review : {text} sentiment :"]
    assert "no slots" in stdout


def test_zero_shot_template_takes_out_only_the_slots():
    strip = recipe_run.zero_shot_template
    assert strip({"template": "{p:4} Review: {text} {p:2} Sentiment:"}) == {
        "template": "Review: {text} Sentiment:"
    }
    assert strip({"template": "Review: {text}\n{p}Sentiment:"})["template"] == (
        "Review: {text}\nSentiment:"
    )
    plain = {"template": "Review:  {text}\n"}  # no slots: untouched, spaces and all
    assert strip(plain) is plain


def test_slots_that_miss_n_tokens_are_refused_before_the_data_and_leave_no_folder(
    capsys, tmp_path, train_argv, monkeypatch
):
    def refuse(*args, **kwargs):
        raise AssertionError("read the data before refusing the template")

    monkeypatch.setattr(api, "load_data", refuse)
    monkeypatch.setattr(recipe_run, "load_data", refuse)
    out = tmp_path / "new" / "run"
    argv = train_argv(out, "--method", "p-tuning", "--n-tokens", "5", "--template", SLOTS)
    line = _error(*_main(capsys, argv)[::2])
    assert "slots hold 3 virtual tokens" in line and "--n-tokens 3" in line
    assert not (tmp_path / "new").exists()


def test_a_run_that_fails_removes_the_folder_it_created_and_keeps_one_it_did_not(
    capsys, tmp_path, train_argv
):
    new = tmp_path / "a" / "b"
    argv = train_argv(new, "--text-column", "no_such_column")
    _error(*_main(capsys, argv)[::2])
    assert not (tmp_path / "a").exists()  # the parents it made go too
    mine = tmp_path / "mine"
    mine.mkdir()
    _error(*_main(capsys, train_argv(mine, "--text-column", "no_such_column"))[::2])
    assert mine.is_dir()


# --- 2. --test-limit and the zero-shot row kept ------------------------------------------


def _rows(labels: str) -> list[Example]:
    return [Example(f"row {i}", label) for i, label in enumerate(labels)]


def test_sample_rows_is_stratified_seeded_and_in_order():
    rows = _rows("a" * 60 + "b" * 30 + "c" * 10)  # sorted by label, as test files often are
    sample = recipe_run.sample_rows(rows, 10)
    assert [r.label for r in sample].count("a") == 6
    assert [r.label for r in sample].count("b") == 3
    assert [r.label for r in sample].count("c") == 1
    assert sample == recipe_run.sample_rows(rows, 10)  # the same rows every time
    assert sample == [r for r in rows if r in sample]  # original order
    assert recipe_run.sample_rows(rows, 0) == rows and recipe_run.sample_rows(rows, 500) == rows
    remainder = recipe_run.sample_rows(_rows("aab"), 2)  # largest remainder: a 1.33, b 0.67
    assert sorted(r.label for r in remainder) == ["a", "b"]
    assert len(recipe_run.sample_rows(rows, 7, stratify=False)) == 7


def test_train_test_limit_scores_the_sample_and_the_report_says_how_many(
    capsys, tmp_path, train_argv, count_scoring
):
    out = tmp_path / "run"
    argv = train_argv(out, "--test-limit", "2")
    argv.remove("--no-baseline")
    code, stdout, err = _main(capsys, argv)
    assert code == 0, err
    assert count_scoring == [2, 2]  # zero-shot and tuned, 2 rows each (of 4)
    report = _report(out)
    assert [row["examples"] for row in report["rows"]] == [2, 2]
    tasks = [value for key, value in report["test"].items() if key != "sample"]
    assert report["test"]["sample"] == recipe_run.SAMPLE and tasks == [{"scored": 2, "rows": 4}]
    assert report["config"]["eval"]["test_limit"] == 2
    note = "test rows scored (eval.test_limit, a seeded class-stratified sample): 2 of 4"
    assert note in (out / "report.md").read_text() and note in stdout


def test_eval_test_limit_scores_a_sample(capsys, tmp_path, train_argv):
    out = tmp_path / "run"
    assert _main(capsys, train_argv(out))[0] == 0
    code, stdout, err = _main(
        capsys, ["eval", out / "prompt.safetensors", "--split", "train", "--test-limit", "6"]
    )
    assert code == 0, err
    result = json.loads(stdout)
    assert result["examples"] == 6 and result["split_rows"] == 32
    assert "sample" in result
    with pytest.raises(SystemExit) as stopped:  # argparse's own usage error, exit 2
        cli.main(["eval", str(out / "prompt.safetensors"), "--test-limit", "-1"])
    assert stopped.value.code == 2 and "--test-limit: must be >= 0" in capsys.readouterr().err


def test_zero_shot_is_scored_once_and_reused_on_resume(capsys, tmp_path, train_argv, count_scoring):
    out = tmp_path / "run"
    argv = train_argv(out)
    argv.remove("--no-baseline")
    assert _main(capsys, argv)[0] == 0
    assert len(count_scoring) == 2  # zero-shot, tuned
    code, _, err = _main(capsys, [*argv, "--resume", "--steps", "4"])
    assert code == 0, err
    assert len(count_scoring) == 3  # the tuned prompt only: zero-shot read back
    assert [r["name"] for r in _report(out)["rows"]][0] == recipe_run.ZERO_SHOT_NAME


def test_zero_shot_survives_an_interrupt_after_it_is_scored(
    capsys, tmp_path, train_argv, count_scoring, monkeypatch
):
    out = tmp_path / "run"
    argv = train_argv(out)
    argv.remove("--no-baseline")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(recipe_run, "train", interrupted)
        assert _main(capsys, argv)[0] == 130
    assert (out / recipe_run.ZERO_SHOT_FILE).is_file() and len(count_scoring) == 1
    assert _main(capsys, argv)[0] == 0  # no checkpoint yet: a fresh start, no flag needed
    assert len(count_scoring) == 2  # the tuned prompt; zero-shot was kept


# --- 3. --resume alone; every refusal before scoring -------------------------------------


def test_resume_with_only_out_takes_the_runs_own_settings(capsys, tmp_path, train_argv):
    out = tmp_path / "run"
    assert _main(capsys, train_argv(out))[0] == 0
    code, _, err = _main(capsys, ["train", "--out", out, "--resume", "--steps", "4"])
    assert code == 0, err
    config = _report(out)["config"]
    assert config["backbone"] == train_argv(out)[2] and config["method"]["n_tokens"] == 2
    assert config["task"]["template"] == "review : {text} sentiment :"
    assert config["train"]["steps"] == 4 and config["baseline"] is False
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 4


def test_resume_refuses_a_changed_setting_before_any_scoring(
    capsys, tmp_path, train_argv, monkeypatch
):
    out = tmp_path / "run"
    argv = train_argv(out)
    argv.remove("--no-baseline")
    assert _main(capsys, argv)[0] == 0
    (out / recipe_run.ZERO_SHOT_FILE).unlink()  # so a resume would have to score it again
    monkeypatch.setattr(recipe_run, "evaluate", _refuse_scoring)
    line = _error(*_main(capsys, ["train", "--out", out, "--resume", "--lr", "0.5"])[::2])
    assert "train.lr: checkpoint 0.1, now 0.5" in line


def test_compare_on_a_multitask_run_is_refused_before_any_scoring(
    capsys, tmp_path, tiny_backbone_folder, small_csv, no_scoring
):
    """--compare trains the run's one task again with the backbone tuned; a multitask
    run is refused before any data or model work (text runs take --compare since the
    baselines became compare units)."""
    config = tmp_path / "mt.yaml"
    config.write_text(
        f"backbone: {tiny_backbone_folder}\ncompare: [lora]\n"
        f"tasks:\n  - {{name: a, data: {small_csv}}}\n  - {{name: b, data: {small_csv}}}\n"
    )
    out = tmp_path / "run"
    line = _error(*_main(capsys, ["train", "--config", config, "--out", out])[::2])
    assert "compare:" in line and "one task" in line
    assert not out.exists()


def test_stored_settings_leave_out_the_folder_and_the_overwrite_flags(tmp_path):
    run_dir.save_settings(
        tmp_path, {"out": "elsewhere", "train": {"overwrite": True, "force_resume": True, "lr": 1}}
    )
    assert run_dir.stored_settings(tmp_path) == {"train": {"lr": 1}}
    (tmp_path / run_dir.SETTINGS).write_text("[1, 2]")
    with pytest.raises(Exception, match="run.json"):
        run_dir.stored_settings(tmp_path)
