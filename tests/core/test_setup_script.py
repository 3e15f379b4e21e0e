"""scripts/fetch_fashion_mnist.sh (run by setup.sh): nothing is installed system-wide as
root unless asked (SOFTPROMPT_APT_INSTALL=1); the no-root fetch is said out loud and the
root command printed. apt-get, dpkg and id are fakes that log their calls."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fetch_fashion_mnist.sh"


@pytest.fixture
def fakes(tmp_path) -> tuple[Path, dict[str, str]]:
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name, body in {
        "apt-get": f'echo "apt-get $*" >> {log}',
        "dpkg": f'echo "dpkg $*" >> {log}',
        "id": "echo 0",  # as root
    }.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:/usr/bin:/bin",
        SOFTPROMPT_HOME=str(tmp_path / "home"),
        FASHION_MNIST_SYSTEM_FILE=str(tmp_path / "absent.gz"),
    )
    env.pop("SOFTPROMPT_APT_INSTALL", None)
    return log, env


def _run(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )


def test_root_gets_no_system_install_unless_asked(fakes):
    log, env = fakes
    done = _run(env)
    assert done.returncode == 0, done.stderr
    calls = log.read_text()
    assert "apt-get download" in calls
    assert "apt-get install" not in calls and "apt-get update" not in calls
    assert "no root, nothing installed system-wide" in done.stderr
    assert "as root run: apt-get install dataset-fashion-mnist" in done.stderr

    log.unlink()
    done = _run(dict(env, SOFTPROMPT_APT_INSTALL="1"))
    assert done.returncode == 0, done.stderr
    assert "apt-get install -y -q dataset-fashion-mnist" in log.read_text()
    assert (
        "SOFTPROMPT_APT_INSTALL=1: running 'apt-get install dataset-fashion-mnist'" in done.stderr
    )


def _fake_df(bin_dir: Path, free_kb: int) -> None:
    """df -P that reports `free_kb` KB available on /."""
    bin_dir.mkdir(exist_ok=True)
    row = f"/dev/vda 262144000 1000 {free_kb} 1% /"
    (bin_dir / "df").write_text(
        f"#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\necho '{row}'\n"
    )
    (bin_dir / "df").chmod(0o755)


@pytest.mark.parametrize("script", ["setup.sh", "setup-vllm.sh"])
def test_an_install_that_cannot_fit_is_refused_before_pip_starts(tmp_path, script):
    """Before: pip ran out of disk halfway ("[Errno 28] No space left on device") with no
    word of how much was needed; CI failed that way on a full disk."""
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    for name in ("setup.sh", "setup-vllm.sh", "need-space.sh"):
        (project / "scripts" / name).write_text((SCRIPT.parent / name).read_text())
    (project / "pyproject.toml").write_text((SCRIPT.parents[1] / "pyproject.toml").read_text())
    _fake_df(tmp_path / "bin", free_kb=100 * 1024)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    done = subprocess.run(
        ["bash", str(project / "scripts" / script)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "needs about 5 GB free on /, and 100 MB are free" in done.stderr
    assert not any(project.glob(".venv*/bin"))  # stopped before the venv


def test_enough_space_passes_the_check(tmp_path):
    _fake_df(tmp_path / "bin", free_kb=50 * 1024 * 1024)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    script = SCRIPT.parent / "need-space.sh"
    done = subprocess.run(["bash", str(script), "5", "x"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == ""
