"""The e2e-nlg built-in, on a tiny file in BIG-bench's task.json format (the real one
comes from the bigbench 1.0.0 sdist on first use; these tests never go online)."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from softprompt.data import builtin_datasets, e2e, load_dataset
from softprompt.errors import DataError


def task_json(n: int = 20) -> bytes:
    """n meaning representations; even ones carry two references as a list, odd ones one
    string (BIG-bench allows both), and the last input repeats the first (merged)."""
    examples = []
    for i in range(n):
        mr = f"name[Place {i}], eatType[pub], area[riverside]"
        target = (
            [f"Place {i} is a pub.", f"Place {i} is a riverside pub."]
            if i % 2 == 0
            else f"Place {i} serves beer."
        )
        examples.append({"input": mr, "target": target})
    examples.append({"input": examples[0]["input"], "target": "Place 0 is by the river."})
    return json.dumps({"name": "e2e_nlg", "examples": examples}).encode()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SOFTPROMPT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _no_network(monkeypatch) -> list:
    calls = []

    def fail(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(e2e.subprocess, "run", fail)
    return calls


def _sdist(folder: Path, payload: bytes, member: str = e2e.TASK_MEMBER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / e2e.BIGBENCH_SDIST
    with tarfile.open(path, "w:gz") as archive:
        for name, data in (
            ("bigbench-1.0.0/README.md", b"x"),
            (f"bigbench-1.0.0/{member}", payload),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_split_by_distinct_input_fixed_and_every_reference_a_row(home, monkeypatch):
    _no_network(monkeypatch)
    e2e.cached_task_file().parent.mkdir(parents=True)
    e2e.cached_task_file().write_bytes(task_json())
    data = load_dataset("e2e-nlg")
    assert data.task == "generation" and data.labels == []
    inputs = [{e.text for e in part} for part in (data.train, data.validation, data.test)]
    assert [len(s) for s in inputs] == [16, 2, 2]  # 80/10/10 of 20 distinct inputs
    assert (
        not (inputs[0] & inputs[1]) and not (inputs[0] & inputs[2]) and not (inputs[1] & inputs[2])
    )
    rows = data.train + data.validation + data.test
    assert len(rows) == 10 * 2 + 10 + 1  # two refs for even inputs, one for odd, +1 merged
    place0 = sorted(e.label for e in rows if e.text.startswith("name[Place 0]"))
    assert place0 == [
        "Place 0 is a pub.",
        "Place 0 is a riverside pub.",
        "Place 0 is by the river.",
    ]
    assert load_dataset("e2e-nlg", seed=7) == data  # the built-in seed, whatever the caller's


def test_a_downloaded_sdist_is_read_and_only_the_task_file_kept(home, monkeypatch):
    calls = _no_network(monkeypatch)
    _sdist(home / "downloads", task_json())
    assert {i.name: i for i in builtin_datasets()}["e2e-nlg"].installed
    data = load_dataset("e2e-nlg")
    assert e2e.cached_task_file().read_bytes() == task_json() and not calls
    assert len({e.text for e in data.test}) == 2


def test_first_use_downloads_the_sdist_and_keeps_the_task_file(home, monkeypatch, capsys):
    def download(command, **kwargs):
        _sdist(Path(command[command.index("-d") + 1]), task_json())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(e2e.subprocess, "run", download)
    assert not {i.name: i for i in builtin_datasets()}[
        "e2e-nlg"
    ].installed  # listing fetches nothing
    data = load_dataset("e2e-nlg")
    assert len(data.train) > 0 and e2e.cached_task_file().is_file()
    assert not (home / "downloads" / e2e.BIGBENCH_SDIST).exists()  # the 358 MB is not kept
    assert "first use, downloading" in capsys.readouterr().err


def test_offline_without_a_cache_says_what_to_run(home, monkeypatch):
    calls = _no_network(monkeypatch)
    with pytest.raises(DataError) as caught:
        load_dataset("e2e-nlg")
    message = str(caught.value)
    assert "not cached" in message and "No matching distribution" in message
    assert "pip download --no-deps --no-binary :all: bigbench==1.0.0 -d" in message
    assert len(calls) == 1


def test_a_wrong_archive_or_a_bad_task_file_is_named(home, monkeypatch):
    _no_network(monkeypatch)
    _sdist(home / "downloads", task_json(), member="bigbench/other/task.json")
    with pytest.raises(DataError, match="has no bigbench/benchmark_tasks/gem/e2e_nlg/task.json"):
        load_dataset("e2e-nlg")
    (home / "downloads" / e2e.BIGBENCH_SDIST).unlink()
    e2e.cached_task_file().parent.mkdir(parents=True)
    e2e.cached_task_file().write_text('{"examples": [{"input": "x"}]}')
    with pytest.raises(DataError, match="not a BIG-bench task.json"):
        load_dataset("e2e-nlg")
