"""The store never loses data: it removes only what it wrote, never follows links out of
its folder, never overwrites an export target unasked, cleans up after a full disk or a
kill -9, never reuses a version number, and refuses a stored file swapped behind its back.
Each test here failed on the store before issue 17."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from softprompt.cli import main
from softprompt.serve import store as store_module
from softprompt.serve.engine import Engine
from softprompt.serve.store import (
    PromptStore,
    StoreError,
    StoreFileChanged,
    StoreWriteError,
)


def listing(root: Path) -> list[str]:
    """Every path under root, relative, sorted (what a user would see with `find`)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- 1. a store write removes only what it wrote -----------------------------------------
def test_the_issue_repro_refuses_a_project_folder_and_keeps_the_thesis(
    tmp_path, prompt_files, capsys
):
    proj = tmp_path / "proj"
    (proj / "files").mkdir(parents=True)
    (proj / "files" / "thesis.txt").write_text("draft")
    prompt = str(prompt_files["movie"][0])
    assert main(["store", "--store", str(proj), "add", "movie", prompt]) == 2
    err = capsys.readouterr().err
    assert "not a prompt store" in err and "files/thesis.txt" in err and "--init" in err
    assert listing(proj) == ["files", "files/thesis.txt"]  # not even a lock file
    assert main(["store", "--store", str(proj), "add", "--init", "movie", prompt]) == 0
    assert main(["store", "--store", str(proj), "remove", "movie"]) == 0
    assert (proj / "files" / "thesis.txt").read_text() == "draft"


def test_init_makes_a_store_beside_foreign_files_and_never_touches_them(tmp_path, prompt_files):
    proj = tmp_path / "proj"
    (proj / "files").mkdir(parents=True)
    (proj / "notes.md").write_text("notes")
    (proj / "files" / "thesis.txt").write_text("draft")
    (proj / "files" / "movie@1.safetensors").write_bytes(b"the user's own bytes")
    store = PromptStore(proj, init=True)
    assert store.add("movie", prompt_files["movie"][0]).ref == "movie@2"  # @1 is taken
    store.add("movie", prompt_files["tweets"][0])
    store.remove("movie@2")
    store.remove("movie")
    assert PromptStore(proj).add("movie", prompt_files["movie"][0]).ref == "movie@4"
    assert (proj / "notes.md").read_text() == "notes"
    assert (proj / "files" / "thesis.txt").read_text() == "draft"
    assert (proj / "files" / "movie@1.safetensors").read_bytes() == b"the user's own bytes"


def test_foreign_files_in_a_store_survive_every_write(store, prompt_files):
    foreign = {
        "files/thesis.txt": "draft",
        "files/movie@9.safetensors": "someone else's",
        "files/.hidden": "x",
        ".index.json.bak": "a user's backup",
        "notes.md": "notes",
    }
    for name, text in foreign.items():
        (store.root / name).write_text(text)
    store.add("movie", prompt_files["tweets"][0])
    store.remove("movie@1")
    store.remove("tweets")
    for name, text in foreign.items():
        assert (store.root / name).read_text() == text, name
    assert store.add("movie", prompt_files["movie"][0]).ref == "movie@3"  # 9 is not ours


@pytest.mark.parametrize("name", ["files", "index.json", ".lock"])
def test_a_symlink_out_of_the_store_is_refused_not_followed(tmp_path, prompt_files, name):
    """A `files/` link would have the sweep empty the folder it points to; an index link
    would have the store read (and trust) a file outside it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "victim.txt").write_text("keep me")
    real = PromptStore(tmp_path / "real")
    real.add("movie", prompt_files["movie"][0])
    outside = {"files": elsewhere, "index.json": real.index_path, ".lock": elsewhere / "lk"}
    root = tmp_path / "store"
    root.mkdir()
    (root / name).symlink_to(outside[name])
    before = listing(elsewhere), real.index_path.read_bytes()
    store = PromptStore(root, init=True)
    with pytest.raises(StoreError, match="symbolic link"):
        store.add("tweets", prompt_files["tweets"][0])
    if name == "index.json":
        with pytest.raises(StoreError, match="symbolic link"):
            store.resolve("movie")
    assert (listing(elsewhere), real.index_path.read_bytes()) == before


def test_a_symlinked_stored_file_is_not_read(store, tmp_path, prompt_files):
    target = store.root / "files" / "movie@1.safetensors"
    target.unlink()
    target.symlink_to(prompt_files["movie"][0])
    with pytest.raises(StoreError, match="symbolic link"):
        store.path(store.resolve("movie@1"))
    store.remove("movie")  # removes the link, not what it points to
    assert prompt_files["movie"][0].is_file() and not os.path.lexists(target)


@pytest.mark.parametrize(
    "file",
    ["../victim.txt", "files/../../victim.txt", "/tmp/victim.txt", "files/tweets@1.safetensors"],
)
def test_an_index_naming_files_outside_its_own_names_is_refused(store, tmp_path, file):
    """Entries may only name `files/<task>@<v>.safetensors`: remove unlinks entry files."""
    raw = json.loads(store.index_path.read_text())
    raw["tasks"]["movie"][0]["file"] = file
    store.index_path.write_text(json.dumps(raw))
    (tmp_path / "victim.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a readable store index"):
        store.remove("movie")
    with pytest.raises(StoreError, match="not a readable store index"):
        store.resolve("movie")
    assert (tmp_path / "victim.txt").read_text() == "keep me"


def edited(key, value, entry=False):
    """The index text with one field changed (in the first movie entry if `entry`)."""

    def change(raw):
        (raw["tasks"]["movie"][0] if entry else raw)[key] = value
        return json.dumps(raw)

    return change


@pytest.mark.parametrize(
    "change",
    [
        edited("version", "1", entry=True),
        edited("version", True, entry=True),
        edited("pending", ["../victim.txt"]),
        edited("high", {"movie": "many"}),
        lambda raw: '{"format": "softprompt-store/1", "tasks": ' + "[" * 100_000 + "]" * 100_000,
    ],
    ids=["version-str", "version-bool", "pending-outside", "high-not-int", "deep-nesting"],
)
def test_a_malformed_index_is_one_clear_error(store, change):
    store.index_path.write_text(change(json.loads(store.index_path.read_text())))
    with pytest.raises(StoreError, match="not a readable store index"):
        store.add("movie", store.root / "files" / "tweets@1.safetensors")


# -- 2. export never overwrites unasked --------------------------------------------------
def test_store_export_refuses_an_existing_file_unless_overwrite(store, tmp_path, capsys):
    out = tmp_path / "checkpoint.safetensors"
    out.write_bytes(b"a run's checkpoint")
    with pytest.raises(StoreError, match="already exists; pass --overwrite"):
        store.export("movie", out)
    argv = ["store", "--store", str(store.root), "export", "movie", "--out", str(out)]
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"a run's checkpoint"
    assert main([*argv, "--overwrite"]) == 0
    assert out.read_bytes() == store.path(store.resolve("movie")).read_bytes()
    with pytest.raises(StoreError, match="is a folder"):
        store.export("movie", tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "store"]


# -- 3. a full disk or a kill -9 leaves nothing behind -----------------------------------
def fsync_failing_at(step: int, calls: list[int]):
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) - 1 == step:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    return fsync


def count_fsyncs(monkeypatch, action) -> int:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", fsync_failing_at(-1, calls))
    action()
    monkeypatch.undo()
    return len(calls)


@pytest.mark.parametrize("step", range(3))
def test_no_space_at_each_add_step_leaves_no_orphan(store, prompt_files, monkeypatch, step):
    """Every durable write calls fsync once; an add makes three (journal, file, index)."""
    other = PromptStore(store.root.parent / "count")
    assert count_fsyncs(monkeypatch, lambda: other.add("movie", prompt_files["movie"][0])) == 3
    before, entries = listing(store.root), store.entries()
    monkeypatch.setattr(os, "fsync", fsync_failing_at(step, []))
    with pytest.raises(StoreWriteError) as caught:
        store.add("movie", prompt_files["tweets"][0])
    monkeypatch.undo()
    message = str(caught.value)
    assert str(store.root) in message and "No space left on device" in message
    assert listing(store.root) == before and store.entries() == entries
    assert store.add("movie", prompt_files["tweets"][0]).ref == (
        "movie@2" if step == 0 else "movie@3"
    )
    assert [e.ref for e in store.remove("movie@1")] == ["movie@1"]
    assert sorted(p.name for p in (store.root / "files").iterdir() if "movie" in p.name) == [
        store.resolve("movie").file.removeprefix("files/")
    ]


def test_no_space_while_removing_keeps_the_entry(store, monkeypatch):
    before = listing(store.root)
    monkeypatch.setattr(os, "fsync", fsync_failing_at(0, []))
    with pytest.raises(StoreWriteError, match="index.json: cannot write the store index"):
        store.remove("movie")
    monkeypatch.undo()
    assert listing(store.root) == before
    assert store.path(store.resolve("movie")).is_file()
    store.remove("movie")
    assert not (store.root / "files" / "movie@1.safetensors").exists()


KILLER = """
import os, signal, sys
from softprompt.serve import store as store_module
from softprompt.serve.store import PromptStore
step, calls, real_fsync, real_read = int(sys.argv[3]), [], os.fsync, store_module.read_prompt_file
def fsync(fd):
    calls.append(fd)
    if len(calls) - 1 == step:
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)
def read(path, **kw):  # step -1: killed while the upload is being checked
    os.kill(os.getpid(), signal.SIGKILL)
os.fsync = fsync
if step < 0:
    store_module.read_prompt_file = read
PromptStore(sys.argv[1]).add("movie", sys.argv[2])
"""


@pytest.mark.parametrize("step", [-1, 0, 1, 2])
def test_leftovers_of_a_kill_9_are_cleaned_by_the_next_writer(store, prompt_files, step):
    """Killed while checking the upload, or at the journal, file or index write: the
    next writer removes the temp files, the upload folder and the journaled file."""
    env = dict(os.environ, PYTHONPATH=str(Path(store_module.__file__).parents[2]))
    args = [str(store.root), str(prompt_files["tweets"][0]), str(step)]
    child = subprocess.run([sys.executable, "-c", KILLER, *args], env=env, timeout=120)
    assert child.returncode == -signal.SIGKILL
    left = set(listing(store.root)) - {".lock", "files", "index.json"}
    assert left - {f"files/{e.task}@{e.version}.safetensors" for e in store.entries()}  # debris
    assert store.resolve("movie").ref == "movie@1"  # readers never see a half-added version
    store.add("plain", prompt_files["plain"][0])
    files = sorted(f"files/{e.task}@{e.version}.safetensors" for e in store.entries())
    assert listing(store.root) == sorted([".lock", "files", "index.json", *files])
    assert store.add("movie", prompt_files["tweets"][0]).version >= 2


def test_a_live_upload_folder_is_not_swept(store, prompt_files):
    with store.scratch() as folder:
        (folder / "upload.safetensors").write_bytes(b"being checked")
        store.add("movie", prompt_files["tweets"][0])
        assert (folder / "upload.safetensors").read_bytes() == b"being checked"
    assert not folder.exists()


# -- 4. version numbers are never reused -------------------------------------------------
def test_versions_are_never_reused_after_deletes(store, prompt_files):
    movie, tweets = prompt_files["movie"][0], prompt_files["tweets"][0]
    assert store.add("movie", tweets).ref == "movie@2"
    store.remove("movie@2")
    assert store.add("movie", movie).ref == "movie@3"
    store.remove("movie")
    assert store.add("movie", tweets).ref == "movie@4"
    with pytest.raises(StoreError, match="it has movie@4"):
        store.resolve("movie@2")


def test_an_index_from_before_high_water_marks_still_reads(store, prompt_files):
    store.add("movie", prompt_files["tweets"][0])
    raw = json.loads(store.index_path.read_text())
    old = {"format": raw["format"], "tasks": raw["tasks"]}  # what the old store wrote
    store.index_path.write_text(json.dumps(old, indent=1))
    assert [e.ref for e in store.entries() if e.task == "movie"] == ["movie@1", "movie@2"]
    store.remove("movie@2")
    assert store.add("movie", prompt_files["movie"][0]).ref == "movie@3"


# -- 5. the index's checksum is checked when a prompt is loaded -------------------------
def test_a_swapped_stored_file_is_refused_with_how_to_fix(store, llama, tmp_path, capsys):
    stored = store.root / "files" / "movie@1.safetensors"
    stored.write_bytes((store.root / "files" / "tweets@1.safetensors").read_bytes())
    with pytest.raises(StoreFileChanged, match="changed since it was added as movie@1"):
        store.load("movie", llama)
    with pytest.raises(StoreFileChanged, match="store remove movie@1"):
        store.export("movie", tmp_path / "out.safetensors")
    engine = Engine(llama, store, cache_bytes=1 << 20, max_input_tokens=64)
    engine.load_all()
    assert "movie" not in engine.tasks and "changed since it was added" in engine.refused["movie"]
    assert "tweets" in engine.tasks
    assert main(["store", "--store", str(store.root), "show", "movie"]) == 2
    assert "changed since it was added" in capsys.readouterr().err


def test_no_space_for_the_uploads_temp_copy_names_the_store(store, prompt_files, monkeypatch):
    real = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        handle = real(fd, mode, *args, **kwargs)
        if "w" in mode:
            handle.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space"))
        return handle

    before = listing(store.root)
    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(StoreWriteError, match="cannot write a temp copy") as caught:
        store.add("movie", prompt_files["tweets"][0])
    monkeypatch.undo()
    assert str(caught.value).startswith(str(store.root)) and "No space" in str(caught.value)
    assert listing(store.root) == before


def test_a_removed_file_that_cannot_be_unlinked_stays_journaled(store, prompt_files, monkeypatch):
    """An unlink that fails (busy, permissions) leaves the name in the journal, so a later
    writer deletes the file instead of forgetting it."""
    real = Path.unlink

    def unlink(self, missing_ok=False):
        if self.name == "movie@1.safetensors":
            raise PermissionError(errno.EACCES, "busy")
        return real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    store.remove("movie")
    store.add("other", prompt_files["movie"][0])  # recovery fails again: still journaled
    monkeypatch.undo()
    assert json.loads(store.index_path.read_text())["pending"] == ["files/movie@1.safetensors"]
    assert (store.root / "files" / "movie@1.safetensors").exists()
    store.add("other", prompt_files["movie"][0])
    assert not (store.root / "files" / "movie@1.safetensors").exists()
    assert json.loads(store.index_path.read_text())["pending"] == []
