"""The run folder loses nothing: a fresh run never replaces an earlier one silently, two
runs never share a folder, resume checks what it resumes, and `--out` problems are named
before any model or data loads. (Issue 11, cases 1, 2, 4, 6 and 8.)"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import softprompt
from softprompt import cli
from softprompt.model import load_prompt_meta
from softprompt.recipes import export
from softprompt.recipes import run as recipe_run
from softprompt.train import run_dir

SRC = str(Path(softprompt.__file__).resolve().parents[1])


def _main(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _ok(capsys, argv: list[str]) -> None:
    code, _, err = _main(capsys, argv)
    assert code == 0, err


def _one_line_error(code: int, err: str) -> str:
    """Exit 2 and one error line (progress bars of the model load may come before it)."""
    assert code == 2, err
    lines = err.replace("\r", "\n").strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("softprompt "), err
    assert sum("error:" in line for line in lines) == 1, err
    return lines[-1]


# --- 1. a fresh run never replaces an earlier one silently -------------------------------


def test_fresh_train_into_a_run_folder_is_refused_and_keeps_it(capsys, tmp_path, train_argv):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")  # a folder with no run in it needs no flag
    _ok(capsys, train_argv(out))
    assert (out / "notes.txt").read_text() == "mine\n"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name in run_dir.RUN_FILES}
    code, _, err = _main(capsys, train_argv(out, "--lr", "0.3"))
    _one_line_error(code, err)
    assert "--resume" in err and "--overwrite" in err and "prompt.safetensors" in err
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name in run_dir.RUN_FILES}
    assert after == before


def test_overwrite_replaces_the_earlier_run(capsys, tmp_path, train_argv):
    out = tmp_path / "run"
    _ok(capsys, train_argv(out))
    (out / "report.md").write_text("an old report\n")
    code, _, err = _main(capsys, train_argv(out, "--lr", "0.3", "--overwrite"))
    assert code == 0, err
    assert load_prompt_meta(out / "prompt.safetensors")["run"]["train"]["lr"] == 0.3
    assert "an old report" not in (out / "report.md").read_text()


def test_overwrite_clears_the_old_run_before_training(capsys, tmp_path, train_argv, stand_in):
    """Nothing of the replaced run may mix with the new one, even if the new one stops early."""
    from softprompt.errors import TrainingError

    out = tmp_path / "run"
    _ok(capsys, train_argv(out))
    seen = []

    def stopping_train(*args, **kwargs):
        seen.extend(name for name in run_dir.RUN_FILES if (out / name).exists())
        raise TrainingError("stopped early")

    stand_in("train", stopping_train)
    code, _, err = _main(capsys, train_argv(out, "--overwrite"))
    assert code == 2 and "stopped early" in err
    assert seen == []


def test_resume_and_overwrite_together_is_an_error(capsys, tmp_path, train_argv, nothing_loads):
    code, _, err = _main(capsys, train_argv(tmp_path, "--resume", "--overwrite"))
    assert "contradict" in _one_line_error(code, err)


# --- 2. one run per folder ------------------------------------------------------------------

HOLDER = """
import sys, time
from softprompt.train.run_dir import lock
with lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(300)
"""


def _hold(out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_on_a_locked_folder_names_the_holder(
    capsys, tmp_path, train_argv, nothing_loads
):
    out = tmp_path / "run"
    holder = _hold(out)
    try:
        code, _, err = _main(capsys, train_argv(out))
        _one_line_error(code, err)
        assert f"pid {holder.pid}" in err and "another softprompt run" in err
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_run_leaves_no_stale_lock(capsys, tmp_path, train_argv):
    out = tmp_path / "run"
    holder = _hold(out)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (out / run_dir.LOCK_FILE).exists()  # the file stays; the kernel dropped the lock
    code, _, err = _main(capsys, train_argv(out))
    assert code == 0, err


def test_the_lock_is_held_during_training_and_released_after(
    capsys, tmp_path, train_argv, stand_in
):
    out = tmp_path / "run"
    probes = []
    original = recipe_run.train

    def probing_train(*args, **kwargs):
        probe = subprocess.run(
            [sys.executable, "-c", HOLDER, str(out)],
            env=dict(os.environ, PYTHONPATH=SRC), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        probes.append(probe)
        return original(*args, **kwargs)

    stand_in("train", probing_train)
    _ok(capsys, train_argv(out))
    assert probes[0].returncode != 0 and f"pid {os.getpid()}" in probes[0].stderr
    with run_dir.lock(out):  # released: a new holder gets it at once
        assert (out / run_dir.LOCK_FILE).read_text().strip() == str(os.getpid())


# --- 4. resume checks what it resumes ---------------------------------------------------------


@pytest.mark.parametrize(
    "flags,key",
    [
        (["--lr", "0.05"], "train.lr"),
        (["--seed", "3"], "train.seed"),
        (["--template", "text : {text} label :"], "task.template"),
        (["--n-tokens", "3"], "method.options.n_tokens"),
        (["--warmup-steps", "0"], "train.warmup_steps"),
    ],
)
def test_resume_with_another_config_names_every_key(capsys, tmp_path, train_argv, flags, key):
    out = tmp_path / "run"
    _ok(capsys, train_argv(out))
    code, _, err = _main(capsys, train_argv(out, "--resume", *flags))
    _one_line_error(code, err)
    assert key in err and "--force-resume" in err and "--out" in err


def test_resume_lists_all_differences_at_once(capsys, tmp_path, train_argv):
    out = tmp_path / "run"
    _ok(capsys, train_argv(out))
    code, _, err = _main(capsys, train_argv(out, "--resume", "--lr", "0.05", "--seed", "3"))
    assert "train.lr: checkpoint 0.1, now 0.05" in err and "train.seed" in err


def test_force_resume_continues_and_safe_keys_may_change(capsys, tmp_path, train_argv):
    out = tmp_path / "run"
    _ok(capsys, train_argv(out))
    more = train_argv(out, "--resume")
    more[more.index("--steps") + 1] = "4"  # going on longer is a resume, not another run
    code, _, err = _main(capsys, more)
    assert code == 0, err
    assert load_prompt_meta(out / "prompt.safetensors")["metrics"]["step"] in (2, 4)
    forced = train_argv(out, "--force-resume", "--lr", "0.05")
    forced[forced.index("--steps") + 1] = "6"
    code, _, err = _main(capsys, forced)
    assert code == 0, err


def test_resume_with_no_checkpoint_says_so(capsys, tmp_path, train_argv, nothing_loads):
    code, _, err = _main(capsys, train_argv(tmp_path / "empty", "--resume"))
    assert "nothing to resume" in _one_line_error(code, err)


def test_resume_of_a_checkpoint_without_a_config_record(capsys, tmp_path, train_argv):
    """A checkpoint written before configs were recorded cannot be checked: say so."""
    import json

    from safetensors.torch import load, save

    out = tmp_path / "run"
    _ok(capsys, train_argv(out))
    path = out / "checkpoint.safetensors"
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(json.loads(data[8 : 8 + size])["__metadata__"]["checkpoint"])
    header.pop("config")
    path.write_bytes(save(load(data), metadata={"checkpoint": json.dumps(header)}))
    code, _, err = _main(capsys, train_argv(out, "--resume"))
    assert "records no config" in _one_line_error(code, err) and "--force-resume" in err
    _ok(capsys, train_argv(out, "--force-resume"))


# --- 6. --out problems come before any loading ------------------------------------------------


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot write: mode 0555, or for root (who ignores modes) sysfs."""
    if os.geteuid() == 0:
        return Path("/sys/softprompt-run")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return folder / "run"


@pytest.mark.parametrize("case", ["regular file", "under a file", "unwritable"])
def test_bad_out_is_named_before_loading(capsys, tmp_path, train_argv, nothing_loads, case):
    (tmp_path / "file.txt").write_text("x")
    out = {
        "regular file": tmp_path / "file.txt",
        "under a file": tmp_path / "file.txt" / "run",
        "unwritable": _unwritable(tmp_path),
    }[case]
    code, _, err = _main(capsys, train_argv(out))
    assert "--out" in _one_line_error(code, err) and str(out) in err


@pytest.mark.parametrize("case", ["a folder", "under a file"])
def test_export_out_is_checked_before_loading(capsys, tmp_path, case, monkeypatch):
    monkeypatch.setattr(export, "load_prompt", lambda *a, **k: pytest.fail("loaded before --out"))
    (tmp_path / "file.txt").write_text("x")
    out = {"a folder": tmp_path, "under a file": tmp_path / "file.txt" / "p.safetensors"}[case]
    code, _, err = _main(capsys, ["export", str(tmp_path / "p.safetensors"), "--out", str(out)])
    assert "--out" in _one_line_error(code, err)


# --- 8. written files respect the umask ---------------------------------------------------------


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_the_umask(capsys, tmp_path, train_argv, umask, mode):
    old = os.umask(umask)
    try:
        _ok(capsys, train_argv(tmp_path / "run"))
    finally:
        os.umask(old)
    for name in run_dir.RUN_FILES:
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == mode, name
