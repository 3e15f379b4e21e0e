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
