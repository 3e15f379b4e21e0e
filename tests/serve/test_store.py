"""The prompt store: addressing, crash safety, two writers at once, fingerprint checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from softprompt.errors import PromptFileError
from softprompt.serve import store as store_module
from softprompt.serve.store import PromptStore, StoreError, parse_ref


def test_versions_and_refs(store, prompt_files):
    path = prompt_files["tweets"][0]
    entry = store.add("movie", path)
    assert entry.ref == "movie@2" and entry.method == "prefix-tuning"
    assert store.resolve("movie").ref == "movie@2"
    assert store.resolve("movie@1").method == "soft-prompt"
    assert [e.ref for e in store.entries() if e.task == "movie"] == ["movie@1", "movie@2"]
    assert store.path(store.resolve("movie@2")).read_bytes() == Path(path).read_bytes()


def test_remove_one_version_then_the_task(store, prompt_files):
    store.add("movie", prompt_files["tweets"][0])
    assert [e.ref for e in store.remove("movie@1")] == ["movie@1"]
    assert store.resolve("movie").ref == "movie@2"
    store.remove("movie")
    with pytest.raises(StoreError, match="no task 'movie'"):
        store.resolve("movie")
    assert sorted(p.name for p in (store.root / "files").iterdir()) == [
        "plain@1.safetensors",
        "story@1.safetensors",
        "tweets@1.safetensors",
    ]


def test_export_round_trip(store, tmp_path, prompt_files):
    out = store.export("tweets@1", tmp_path / "out.safetensors")
    assert out.read_bytes() == Path(prompt_files["tweets"][0]).read_bytes()


@pytest.mark.parametrize(
    "ref,message",
    [
        ("", "task name"),
        ("a/b", "task name"),
        ("a.b", "task name"),
        ("movie@0", "version"),
        ("movie@x", "version"),
        ("movie@", "version"),
    ],
)
def test_bad_refs_are_named(ref, message):
    with pytest.raises(StoreError, match=message):
        parse_ref(ref)


def test_unknown_version_lists_what_exists(store):
    with pytest.raises(StoreError, match="it has movie@1"):
        store.resolve("movie@7")


def test_bad_prompt_bytes_are_refused_and_nothing_written(store, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 40)
    before = store.index_path.read_bytes()
    with pytest.raises(StoreError, match="not a readable prompt file"):
        store.add("movie", bad)
    with pytest.raises(StoreError, match="no such prompt file"):
        store.add("movie", tmp_path / "missing.safetensors")
    assert store.index_path.read_bytes() == before


def test_crash_while_writing_the_index_keeps_the_old_one(store, prompt_files, monkeypatch):
    """The journal lands, the new file lands, the index swap fails: the entries are the
    old ones, the new file is removed at once (no orphan), and later writes work."""
    before = store.entries()
    writes = []

    def crash_on_second(path, text):
        writes.append(path)
        if len(writes) == 2:
            raise OSError(28, "No space left on device")
        store_module.atomic_write_bytes(path, text.encode())

    monkeypatch.setattr(store_module, "atomic_write_text", crash_on_second)
    with pytest.raises(StoreError, match=r"index.json: cannot write the store index \(No space"):
        store.add("movie", prompt_files["tweets"][0])
    monkeypatch.undo()
    assert store.entries() == before
    assert not (store.root / "files" / "movie@2.safetensors").exists()
    assert store.add("other", prompt_files["movie"][0]).ref == "other@1"
    assert store.add("movie", prompt_files["tweets"][0]).ref == "movie@3"  # 2 was handed out


def test_a_corrupt_index_is_reported_not_guessed(store):
    store.index_path.write_text('{"format": "softprompt-store/1", "tasks": {"movie": [{"x"')
    with pytest.raises(StoreError, match="not a readable store index"):
        store.entries()


def test_prompt_for_another_backbone_is_refused_at_load(store, gpt2, llama):
    entry, model = store.load("movie", llama)
    assert entry.ref == "movie@1" and model.backbone is llama
    with pytest.raises(PromptFileError, match="made for backbone 'tiny-llama'"):
        store.load("movie", gpt2)


WRITER = """
import sys, time
from softprompt.serve.store import PromptStore
store = PromptStore(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[5]) - time.time()))  # both start writing together
for i in range(int(sys.argv[3])):
    store.add(sys.argv[4], sys.argv[2])
"""


def test_two_processes_adding_at_once_lose_nothing(tmp_path, prompt_files):
    """Each process adds N versions to one task; without the lock, read-modify-write races
    lose versions or reuse numbers (checked: with flock made a no-op, 30 of 60 survive)."""
    root, count, start = tmp_path / "shared", 30, str(time.time() + 5)
    env = dict(os.environ, PYTHONPATH=str(Path(store_module.__file__).parents[2]))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(root),
                str(prompt_files[t][0]),
                str(count),
                "t",
                start,
            ],
            env=env,
        )
        for t in ("movie", "tweets")
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    store = PromptStore(root)
    entries = store.entries()
    assert [e.version for e in entries] == list(range(1, 2 * count + 1))
    assert sorted(e.method for e in entries) == ["prefix-tuning"] * count + ["soft-prompt"] * count
    assert len(list((root / "files").iterdir())) == 2 * count
    assert json.loads(store.index_path.read_text())["format"] == "softprompt-store/1"
    for entry in entries:
        assert store.path(entry).stat().st_size == entry.bytes
