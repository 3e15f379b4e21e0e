"""Writes the CLI must not get wrong: every export path refuses an existing `--out`
unless `--overwrite`; `predict` keeps the input beside a generated output; a write that
fails names its file; SIGTERM and Ctrl-C during `train` say what was actually kept."""

from __future__ import annotations

import errno
import json
import os
import signal

import pytest
from toydata import LABELS, TEMPLATE

from softprompt import cli, promptfile
from softprompt.backbones import load_backbone
from softprompt.model import PromptModel
from softprompt.tasks import TaskConfig
from softprompt.train import loop


def _main(capsys, *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def prompt_file(tiny_backbone_folder, tmp_path_factory):
    """A classification soft prompt on the tiny backbone (read-only in these tests)."""
    model = PromptModel(
        load_backbone(str(tiny_backbone_folder)),
        TaskConfig(labels=list(LABELS), template=TEMPLATE),
        "soft-prompt",
        {"n_tokens": 3},
    )
    return model.save(tmp_path_factory.mktemp("prompt") / "p.safetensors")


def _error_line(err: str) -> str:
    """The one error line (a backbone's loading bar may come before it on stderr)."""
    last = err.strip().splitlines()[-1]
    assert last.startswith("softprompt ") and ": error: " in last, err
    return last


def _refused(code: int, err: str, path) -> None:
    assert code == 2
    line = _error_line(err)
    assert str(path) in line and "--overwrite" in line


# -- every export path refuses an existing target --------------------------------------


def test_export_refuses_an_existing_file_unless_overwrite(capsys, prompt_file, tmp_path):
    target = tmp_path / "notes.safetensors"
    target.write_text("my notes")
    code, _, err = _main(capsys, "export", prompt_file, "--out", target)
    _refused(code, err, target)
    assert target.read_text() == "my notes"
    code, _, err = _main(capsys, "export", prompt_file, "--out", target, "--overwrite")
    assert code == 0, err
    assert promptfile.read_prompt_file(target)[1]["method"]["name"] == "soft-prompt"


def test_export_refuses_a_dangling_symlink(capsys, prompt_file, tmp_path):
    link = tmp_path / "link.safetensors"
    link.symlink_to(tmp_path / "elsewhere.safetensors")
    code, _, err = _main(capsys, "export", prompt_file, "--out", link)
    _refused(code, err, link)
    assert link.is_symlink()


def test_import_peft_refuses_an_existing_file_unless_overwrite(
    capsys, prompt_file, tmp_path, tiny_backbone_folder
):
    code, _, err = _main(capsys, "export", prompt_file, "--format", "peft", "--out", tmp_path / "a")
    assert code == 0, err
    target = tmp_path / "kept.safetensors"
    target.write_bytes(b"precious")
    argv = ("import-peft", tmp_path / "a", "--backbone", tiny_backbone_folder, "--out", target)
    code, _, err = _main(capsys, *argv)
    _refused(code, err, target)
    assert target.read_bytes() == b"precious"
    code, _, err = _main(capsys, *argv, "--overwrite")
    assert code == 0, err
    assert promptfile.read_prompt_file(target)[1]["method"]["name"]


def test_export_peft_refuses_a_non_empty_folder_unless_overwrite(capsys, prompt_file, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "thesis.txt").write_text("draft")
    argv = ("export", prompt_file, "--format", "peft", "--out", folder)
    code, _, err = _main(capsys, *argv)
    _refused(code, err, folder)
    assert "thesis.txt" in err
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]
    code, _, err = _main(capsys, *argv, "--overwrite")
    assert code == 0, err
    assert (folder / "thesis.txt").read_text() == "draft"  # nothing else is touched
    assert (folder / "adapter_config.json").is_file()
    code, _, err = _main(capsys, *argv)  # an adapter already there is not replaced unasked
    _refused(code, err, folder)


def test_export_into_an_empty_folder_needs_no_flag(capsys, prompt_file, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = _main(
        capsys, "export", prompt_file, "--format", "peft", "--out", tmp_path / "empty"
    )
    assert code == 0, err


def test_export_onto_a_runs_checkpoint_is_refused_and_the_run_resumes(capsys, train_argv, tmp_path):
    out = tmp_path / "run"
    assert cli.main(train_argv(out)) == 0
    checkpoint = out / "checkpoint.safetensors"
    before = checkpoint.read_bytes()
    capsys.readouterr()
    code, _, err = _main(capsys, "export", out / "prompt.safetensors", "--out", checkpoint)
    _refused(code, err, checkpoint)
    assert checkpoint.read_bytes() == before
    code, _, err = _main(capsys, *train_argv(out, "--resume", "--steps", "4"))
    assert code == 0, err


# -- a failed write names its file -----------------------------------------------------


def test_a_full_disk_names_the_file_and_leaves_no_temp(capsys, prompt_file, tmp_path, monkeypatch):
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # every atomic write flushes with it
    target = tmp_path / "out" / "flat.safetensors"
    code, _, err = _main(capsys, "export", prompt_file, "--out", target)
    assert code == 2
    line = _error_line(err)
    assert f"{target}: No space left on device" in line and "free some disk space" in line
    assert list(target.parent.iterdir()) == []


# -- predict on a generation prompt ----------------------------------------------------


def test_predict_on_a_generation_prompt_keeps_the_input_text(
    capsys, tiny_backbone_folder, tmp_path
):
    task = TaskConfig(kind="generation", template="{text} answer :", max_new_tokens=3)
    model = PromptModel(
        load_backbone(str(tiny_backbone_folder)), task, "soft-prompt", {"n_tokens": 2}
    )
    path = model.save(tmp_path / "gen.safetensors")
    code, out, err = _main(capsys, "predict", path, "the movie was good")
    assert code == 0, err
    line = json.loads(out)
    assert line["text"] == "the movie was good"
    assert isinstance(line["output"], str)
    assert line["output"] == model.predict(["the movie was good"])[0]["text"]
    code, out, err = _main(capsys, "predict", "--task", f"gen={path}", "gen=the movie was good")
    assert code == 0, err
    line = json.loads(out)
    assert line["task"] == "gen" and line["text"] == "the movie was good"
    assert line["output"] == model.predict(["the movie was good"])[0]["text"]


# -- SIGTERM and Ctrl-C during train ---------------------------------------------------


class _Unhandled(Exception):
    """What the test's own SIGTERM handler raises: softprompt did not take the signal."""


@pytest.fixture
def sigterm_guard():
    """Without softprompt's handler, SIGTERM would end pytest itself: fail the test instead,
    and check that `main` put the handler back."""

    def unhandled(signum, frame):
        raise _Unhandled("SIGTERM reached the default handler")

    previous = signal.signal(signal.SIGTERM, unhandled)
    yield unhandled
    assert signal.getsignal(signal.SIGTERM) is unhandled  # main restored it
    signal.signal(signal.SIGTERM, previous)


def _stop_at(monkeypatch, at_step: int, stop) -> None:
    """Run `stop()` at the start of optimizer step `at_step` (0-based)."""
    advance = loop._advance

    def advancing(run, step):
        if step == at_step:
            stop()
        return advance(run, step)

    monkeypatch.setattr(loop, "_advance", advancing)


def _sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def _ctrl_c() -> None:
    raise KeyboardInterrupt


def test_sigterm_before_the_first_evaluation_says_nothing_was_kept(
    capsys, train_argv, tmp_path, monkeypatch, sigterm_guard
):
    out = tmp_path / "run"
    _stop_at(monkeypatch, 0, _sigterm)
    code, _, err = _main(capsys, *train_argv(out, "--steps", "4"))
    assert code == 143
    assert "terminated (SIGTERM)" in err and f"nothing was written to {out} yet" in err
    assert not (out / "prompt.safetensors").exists()


def test_sigterm_after_an_evaluation_names_the_files_kept_and_the_run_resumes(
    capsys, train_argv, tmp_path, monkeypatch, sigterm_guard
):
    out = tmp_path / "run"
    _stop_at(monkeypatch, 2, _sigterm)  # after the evaluation and checkpoint of step 2
    code, _, err = _main(capsys, *train_argv(out, "--steps", "4"))
    assert code == 143
    assert f"{out / 'prompt.safetensors'} (best prompt so far)" in err
    assert f"{out / 'checkpoint.safetensors'} (last checkpoint" in err
    assert not list(out.glob(".*.safetensors.*"))  # no temp file left behind
    monkeypatch.undo()
    code, _, err = _main(capsys, *train_argv(out, "--steps", "4", "--resume"))
    assert code == 0, err


def test_ctrl_c_before_anything_was_written_does_not_claim_files(
    capsys, train_argv, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    _stop_at(monkeypatch, 0, _ctrl_c)
    code, _, err = _main(capsys, *train_argv(out, "--steps", "4"))
    assert code == 130
    assert "interrupted" in err and "kept" not in err
    assert f"nothing was written to {out} yet" in err
