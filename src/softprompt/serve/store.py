"""A directory of prompt files addressed as `task` or `task@version`.

Layout: `ROOT/index.json` (the only mutable file), `ROOT/files/<task>@<v>.safetensors`
(never rewritten) and `ROOT/.lock`. Writers hold an exclusive `fcntl` lock on `.lock` for
the whole read-modify-write, so two processes adding at once both land.

A store only ever removes what it wrote. Users point `--store` at folders by hand, so:
- a folder with content but no `index.json` is refused (unless `init=True`/`--init`), and
  the store never lists a folder to decide what to delete: it deletes the files its index
  names, and its own temp names (`.index.json.XXXXXXXX`, `files/.<task>@<v>.safetensors.
  XXXXXXXX`, `.upload-XXXXXXXX/`), nothing else;
- a symlinked `index.json`, `files/`, `.lock` or stored file is refused, never followed;
- every entry's file name is checked to be `files/<task>@<v>.safetensors`, so a hostile
  index cannot name a path outside the store.

Crash safety is a journal in the index. `add` first writes the index with the new file's
name under `pending` (and the version under `high`), then the file, then the index with the
entry. A failure in between unlinks the file at once; a kill -9 leaves a `pending` name that
the next writer deletes, with any temp files, before it starts. `remove` drops the entries
and lists their files under `pending` in one index swap, then unlinks them. Every index
write is one atomic rename, so readers see the old index or the new one.

Versions are never reused: `high[task]` is the highest version the task ever had (kept
after the task is removed), and a new version is above it. Indexes written before `high`
existed are read as if it were each task's newest version.

Loading checks the stored file against the index's sha256, so a file swapped behind the
store's back is refused rather than served under the old checksum. Entries are checked
against a backbone's fingerprint when loaded, not when added: one store may hold prompts
for several backbones.

The index document itself (entries, references, the format and its checks) is
softprompt.serve.store_index; its names are importable from here too.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from softprompt.errors import PromptFileError
from softprompt.files import atomic_write_bytes, atomic_write_text
from softprompt.promptfile import read_prompt_file
from softprompt.serve.store_index import (
    Entry,
    StoreError,
    _file_name,
    _Index,
    _parse_index,
    check_task_name,
    parse_ref,
)

_RANDOM = r"[a-z0-9_]{8}"  # what tempfile.mkstemp/mkdtemp put after the prefix
_INDEX_TMP = re.compile(rf"^\.index\.json\.{_RANDOM}$")
_FILE_TMP = re.compile(rf"^\.[A-Za-z0-9][A-Za-z0-9_-]{{0,63}}@[1-9][0-9]*\.safetensors\.{_RANDOM}$")
_SCRATCH = re.compile(rf"^\.upload-{_RANDOM}$")
_SCRATCH_PREFIX = ".upload-"


class StoreWriteError(StoreError):
    """The disk refused a store write (full, read-only, no permission); names the path."""


class StoreFileChanged(StoreError):
    """A stored file no longer holds the prompt its index entry was made from."""


class PromptStore:
    """Prompt files by task and version under one directory.

    `init=True` lets the first write make a store in a folder that already holds other
    things (they are never touched); without it such a folder is refused."""

    def __init__(self, root: str | Path, *, init: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.index_path = self.root / "index.json"
        self.init = init

    # -- reading -------------------------------------------------------------
    def _check_links(self) -> None:
        """The store's own names must be plain files/folders: a link could lead a write
        (or a delete) out of the store."""
        for name in ("index.json", "files", ".lock"):
            path = self.root / name
            if path.is_symlink():
                raise StoreError(
                    f"{path}: is a symbolic link; a store never follows links out of its "
                    f"folder. Replace it with what it points to, or use another --store"
                )
        files = self.root / "files"
        if files.exists() and not files.is_dir():
            raise StoreError(f"{files}: is not a folder; this is not a prompt store")

    def _read_index(self) -> _Index:
        self._check_links()
        if not self.index_path.exists():
            return _Index()
        try:
            raw = json.loads(self.index_path.read_text("utf-8"))
            return _parse_index(raw)
        except OSError as exc:
            raise StoreError(f"{self.index_path}: cannot read it ({exc.strerror})") from None
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise StoreError(
                f"{self.index_path}: not a readable store index ({str(exc)[:200]}); restore it "
                "from a backup or re-add the prompts to a fresh --store folder"
            ) from None

    def entries(self) -> list[Entry]:
        """Every stored version, by task then version."""
        index = self._read_index().tasks
        return [e for task in sorted(index) for e in index[task]]

    def tasks(self) -> dict[str, Entry]:
        """Each task's newest version (what `task` without '@' means)."""
        return {task: vs[-1] for task, vs in self._read_index().tasks.items() if vs}

    def resolve(self, ref: str) -> Entry:
        task, version = parse_ref(ref)
        versions = self._read_index().tasks.get(task, [])
        if not versions:
            raise StoreError(
                f"no task {task!r} in the store {self.root} (see `softprompt store list`)"
            )
        if version is None:
            return versions[-1]
        for entry in versions:
            if entry.version == version:
                return entry
        have = ", ".join(e.ref for e in versions)
        raise StoreError(f"no version {ref!r} in the store {self.root}; it has {have}")

    def path(self, entry: Entry) -> Path:
        """The entry's file, checked to hold the prompt that was added (the index's
        sha256): a file swapped behind the store's back is refused, never served."""
        path = self.root / entry.file
        self._check_links()
        if path.is_symlink():
            raise StoreError(f"{path}: is a symbolic link; a store never follows links")
        if not path.is_file():
            raise StoreError(
                f"{path}: the file for {entry.ref} is missing; restore it, or "
                f"`softprompt store remove {entry.ref}` and add the prompt again"
            )
        _, meta = read_prompt_file(path)
        if entry.sha256 and meta.get("sha256") != entry.sha256:
            raise StoreFileChanged(
                f"{path}: the file changed since it was added as {entry.ref} (index sha256 "
                f"{entry.sha256[:16]}..., file {str(meta.get('sha256'))[:16]}...); restore the "
                f"original, or `softprompt store remove {entry.ref}` and add the new file with "
                f"`softprompt store add {entry.task} FILE`"
            )
        return path

    def load(self, ref: str, backbone: Any) -> tuple[Entry, Any]:
        """(entry, PromptModel) checked against the index's sha256 and `backbone`'s
        fingerprint (refused on mismatch)."""
        from softprompt.model import PromptModel

        entry = self.resolve(ref)
        return entry, PromptModel.load(self.path(entry), backbone)

    def export(self, ref: str, out: str | Path, *, overwrite: bool = False) -> Path:
        """Copy a stored version out as a plain prompt file; an existing `out` is refused
        unless `overwrite` (it may be a run's checkpoint or another prompt)."""
        entry = self.resolve(ref)
        data = _read_bytes(self.path(entry))
        write_new_file(Path(out), data, overwrite=overwrite)
        return Path(out)

    # -- writing -------------------------------------------------------------
    def _check_folder(self) -> None:
        """Refuse to write into an existing folder that is not a store (unless `init`)."""
        if not self.root.exists():
            return
        if not self.root.is_dir():
            raise StoreError(f"{self.root}: is not a folder; --store names a folder")
        self._check_links()
        if self.init or self.index_path.exists():
            return
        foreign = list(itertools.islice(_foreign_names(self.root), 4))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise StoreError(
                f"{self.root}: not a prompt store (no index.json) and not empty (it holds "
                f"{shown}); use a new or empty --store folder, or `store add --init` to make a "
                "store here (a store never touches files it did not write)"
            )

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Exclusive lock on ROOT/.lock (blocks other writers); the folder is checked first
        so a lock file is never dropped into a folder that is not a store."""
        self._check_folder()
        lock = self.root / ".lock"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            raise _write_error(lock, exc, "open the store's lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._check_links()
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def _locked(self) -> Iterator[_Index]:
        """One read-modify-write of the index, after cleaning what a crashed writer left."""
        with self._exclusive():
            files = self.root / "files"
            try:
                files.mkdir(exist_ok=True)
            except OSError as exc:
                raise _write_error(files, exc, "make the folder") from None
            index = self._read_index()
            self._recover(index)
            yield index

    def _recover(self, index: _Index) -> None:
        """Delete what a killed or failed writer left: files the journal names, temp files
        with the store's own names, and upload folders no live process holds."""
        for name in list(index.pending):
            with contextlib.suppress(OSError):
                (self.root / name).unlink(missing_ok=True)
                index.pending.remove(name)  # kept in the journal if the unlink failed
        for folder, pattern in ((self.root, _INDEX_TMP), (self.root / "files", _FILE_TMP)):
            for path in folder.iterdir():
                if pattern.match(path.name) and not path.is_dir():
                    with contextlib.suppress(OSError):
                        path.unlink()
        for path in self.root.iterdir():
            if _SCRATCH.match(path.name) and path.is_dir() and not path.is_symlink():
                _remove_if_unlocked(path)

    def _write_index(self, index: _Index) -> None:
        try:
            atomic_write_text(self.index_path, index.to_json())
        except OSError as exc:
            raise _write_error(self.index_path, exc, "write the store index") from None

    def add(self, task: str, data: bytes | str | Path) -> Entry:
        """Store a prompt file (bytes or a path) as the task's next version (a number the
        task never had before)."""
        check_task_name(task)
        if not isinstance(data, bytes):
            data = _read_bytes(Path(data))
        with self.scratch() as folder:
            meta = _check_prompt_bytes(data, f"prompt for task {task!r}", folder=folder)
        with self._locked() as index:
            version = index.next_version(task)
            while os.path.lexists(self.root / _file_name(task, version)):
                version += 1  # a file the store did not write: never overwritten
            name = _file_name(task, version)
            index.high[task] = version
            index.pending.append(name)
            self._write_index(index)  # journal first: a crash leaves a name to clean up
            try:
                entry = self._write_entry(task, version, name, data, meta)
                index.tasks.setdefault(task, []).append(entry)
                index.pending.remove(name)
                self._write_index(index)
            except BaseException:
                (self.root / name).unlink(missing_ok=True)  # ours: the journal names it
                raise
        return entry

    def _write_entry(
        self, task: str, version: int, name: str, data: bytes, meta: dict[str, Any]
    ) -> Entry:
        path = self.root / name
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            raise _write_error(path, exc, "write the prompt file") from None
        return Entry(
            task=task,
            version=version,
            file=name,
            sha256=meta.get("sha256", ""),
            bytes=len(data),
            method=meta.get("method", {}).get("name", "?"),
            kind=meta.get("task", {}).get("kind", "?"),
            backbone=meta.get("backbone", {}).get("name", "?"),
            fingerprint=meta.get("backbone", {}).get("fingerprint", "?"),
            added=time.time(),
        )

    def remove(self, ref: str) -> list[Entry]:
        """Remove one version (`task@v`) or every version of a task (`task`); their
        numbers are never given out again."""
        task, version = parse_ref(ref)
        with self._locked() as index:
            versions = index.tasks.get(task, [])
            gone = [e for e in versions if version is None or e.version == version]
            if not gone:
                raise StoreError(
                    f"no {ref!r} in the store {self.root} (see `softprompt store list`)"
                )
            index.high[task] = index.next_version(task) - 1  # before the entries go
            index.tasks[task] = [e for e in versions if e not in gone]
            index.pending += [e.file for e in gone]  # deleted next; a crash leaves the names
            self._write_index(index)
            for entry in gone:
                with contextlib.suppress(OSError):  # still journaled: the next writer retries
                    (self.root / entry.file).unlink(missing_ok=True)
        return gone

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A private folder inside the store for checking an upload before it is added.
        It is locked while in use; a writer that finds one whose process was killed
        removes it, so uploads leave nothing behind outside the store either."""
        with self._locked():
            try:
                folder = Path(tempfile.mkdtemp(prefix=_SCRATCH_PREFIX, dir=self.root))
                fd = os.open(folder, os.O_RDONLY)
            except OSError as exc:
                raise _write_error(self.root, exc, "make an upload folder in") from None
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            os.close(fd)


def _foreign_names(root: Path) -> Iterator[str]:
    """Names in ROOT that a store did not put there."""
    for path in root.iterdir():
        if path.name == "files" and path.is_dir() and not path.is_symlink():
            for inner in path.iterdir():
                if not _FILE_TMP.match(inner.name):
                    yield f"files/{inner.name}"
        elif not (path.name == ".lock" or _INDEX_TMP.match(path.name) or _SCRATCH.match(path.name)):
            yield path.name


def _remove_if_unlocked(folder: Path) -> None:
    """Remove an upload folder unless a live process holds its lock."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return  # in use
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(fd)


def _write_error(path: Path, exc: OSError, doing: str) -> StoreWriteError:
    reason = exc.strerror or str(exc)
    return StoreWriteError(
        f"{path}: cannot {doing} ({reason}); free disk space or fix the permissions, then "
        "retry (the store is unchanged)"
    )


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise StoreError(f"{path}: is a folder, not a prompt file")
    if not path.is_file():
        raise StoreError(f"{path}: no such prompt file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StoreError(f"{path}: cannot read it ({exc.strerror})") from None


def write_new_file(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write `data` to `path` atomically; an existing `path` is refused unless `overwrite`
    (the check and the write are one step: the file is linked in, which fails if taken)."""
    if path.is_dir():
        raise StoreError(f"{path}: is a folder; name a file to write")
    if not overwrite and os.path.lexists(path):
        raise _exists(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        if overwrite:
            atomic_write_bytes(path, data)
            return
        atomic_write_bytes(tmp, data)
        os.link(tmp, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError as exc:
        raise _write_error(path, exc, "write") from None
    finally:
        tmp.unlink(missing_ok=True)


def _exists(path: Path) -> StoreError:
    return StoreError(
        f"{path}: already exists; pass --overwrite to replace it, or pick another --out"
    )


def _check_prompt_bytes(data: bytes, what: str, *, folder: Path | None = None) -> dict[str, Any]:
    """Verify a prompt file's bytes (format, checksum) before it enters the store; the temp
    copy goes in `folder` (a store's `scratch()`), or the system temp folder."""
    where = Path(folder or tempfile.gettempdir())
    try:
        fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=where)
    except OSError as exc:
        raise _write_error(where, exc, "write a temp copy of the prompt in") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _, meta = read_prompt_file(tmp)
    except PromptFileError as exc:
        raise StoreError(f"{what}: {str(exc).replace(tmp, 'the uploaded file')}") from None
    except OSError as exc:
        raise _write_error(where, exc, "write a temp copy of the prompt in") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return meta
