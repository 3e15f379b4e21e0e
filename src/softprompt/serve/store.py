"""A directory of prompt files addressed as `task` or `task@version`.

Layout: `ROOT/index.json` (the only mutable file) and `ROOT/files/<task>@<v>.safetensors`
(never rewritten). Every change writes the new file first, then swaps the index in with
one atomic rename, so a crash leaves the old index (and at worst an orphan file that the
next writer removes), never a half-written one. Writers hold an exclusive `fcntl` lock on
`ROOT/.lock` for the whole read-modify-write, so two processes adding at once both land.
Entries are checked against a backbone's fingerprint when loaded, not when added: one
store may hold prompts for several backbones.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from softprompt.errors import PromptFileError, SoftPromptError
from softprompt.promptfile import atomic_write_bytes, atomic_write_text, read_prompt_file

INDEX_FORMAT = "softprompt-store/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class StoreError(SoftPromptError):
    """A store reference, entry or index is unusable; the message says which and why."""


@dataclass(frozen=True)
class Entry:
    """One stored prompt version."""

    task: str
    version: int
    file: str  # relative to the store root
    sha256: str  # the prompt file's tensor checksum
    bytes: int
    method: str
    kind: str  # classification or generation
    backbone: str
    fingerprint: str
    added: float

    @property
    def ref(self) -> str:
        return f"{self.task}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ref": self.ref}


def check_task_name(task: str) -> str:
    if not isinstance(task, str) or not _NAME.match(task):
        raise StoreError(
            f"task name {task!r}: use 1-64 letters, digits, '-' or '_' (starting with a letter "
            "or digit); '@' separates a version"
        )
    return task


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'task' -> (task, None) (the newest version); 'task@3' -> (task, 3)."""
    task, sep, version = str(ref).partition("@")
    check_task_name(task)
    if not sep:
        return task, None
    if not version.isdigit() or int(version) < 1:
        raise StoreError(f"prompt reference {ref!r}: the version after '@' must be a number >= 1")
    return task, int(version)


class PromptStore:
    """Prompt files by task and version under one directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.index_path = self.root / "index.json"

    # -- reading -------------------------------------------------------------
    def _read_index(self) -> dict[str, list[Entry]]:
        if not self.index_path.exists():
            return {}
        try:
            raw = json.loads(self.index_path.read_text("utf-8"))
            if raw.get("format") != INDEX_FORMAT:
                raise ValueError(f"format {raw.get('format')!r}")
            return {task: [Entry(**e) for e in versions] for task, versions in raw["tasks"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(
                f"{self.index_path}: not a readable store index ({exc}); restore it from a "
                "backup or re-add the prompts to a fresh --store folder"
            ) from None

    def entries(self) -> list[Entry]:
        """Every stored version, by task then version."""
        index = self._read_index()
        return [e for task in sorted(index) for e in index[task]]

    def tasks(self) -> dict[str, Entry]:
        """Each task's newest version (what `task` without '@' means)."""
        return {task: versions[-1] for task, versions in self._read_index().items() if versions}

    def resolve(self, ref: str) -> Entry:
        task, version = parse_ref(ref)
        versions = self._read_index().get(task, [])
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
        return self.root / entry.file

    # -- writing -------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, list[Entry]]]:
        """Exclusive lock for one read-modify-write of the index (blocks other writers)."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "files").mkdir(exist_ok=True)
        with open(self.root / ".lock", "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield self._read_index()
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _write_index(self, index: dict[str, list[Entry]]) -> None:
        body = {
            "format": INDEX_FORMAT,
            "tasks": {t: [asdict(e) for e in vs] for t, vs in sorted(index.items()) if vs},
        }
        atomic_write_text(self.index_path, json.dumps(body, indent=1, sort_keys=True))

    def add(self, task: str, data: bytes | str | Path) -> Entry:
        """Store a prompt file (bytes or a path) as the task's next version."""
        check_task_name(task)
        if not isinstance(data, bytes):
            data = Path(data).read_bytes() if Path(data).is_file() else _missing(data)
        meta = _check_prompt_bytes(data, f"prompt for task {task!r}")
        with self._locked() as index:
            versions = index.setdefault(task, [])
            version = versions[-1].version + 1 if versions else 1
            name = f"files/{task}@{version}.safetensors"
            atomic_write_bytes(self.root / name, data)
            entry = Entry(
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
            versions.append(entry)
            self._write_index(index)
            self._sweep(index)
        return entry

    def remove(self, ref: str) -> list[Entry]:
        """Remove one version (`task@v`) or every version of a task (`task`)."""
        task, version = parse_ref(ref)
        with self._locked() as index:
            versions = index.get(task, [])
            gone = [e for e in versions if version is None or e.version == version]
            if not gone:
                raise StoreError(
                    f"no {ref!r} in the store {self.root} (see `softprompt store list`)"
                )
            index[task] = [e for e in versions if e not in gone]
            self._write_index(index)
            self._sweep(index)
        return gone

    def _sweep(self, index: dict[str, list[Entry]]) -> None:
        """Delete files no index entry names (after the index no longer names them, so a
        crash in between only leaves an orphan for the next writer)."""
        live = {e.file for vs in index.values() for e in vs}
        for path in (self.root / "files").iterdir():
            if f"files/{path.name}" not in live:
                path.unlink(missing_ok=True)

    def export(self, ref: str, out: str | Path) -> Path:
        """Copy a stored version out as a plain prompt file."""
        entry = self.resolve(ref)
        data = self.path(entry).read_bytes()
        atomic_write_bytes(Path(out), data)
        return Path(out)

    def load(self, ref: str, backbone: Any) -> tuple[Entry, Any]:
        """(entry, PromptModel) checked against `backbone`'s fingerprint (refused on mismatch)."""
        from softprompt.model import PromptModel

        entry = self.resolve(ref)
        return entry, PromptModel.load(self.path(entry), backbone)


def _missing(path: Any) -> bytes:
    raise StoreError(f"{path}: no such prompt file")


def _check_prompt_bytes(data: bytes, what: str) -> dict[str, Any]:
    """Verify a prompt file's bytes (format, checksum) before it enters the store."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _, meta = read_prompt_file(tmp)
    except PromptFileError as exc:
        raise StoreError(f"{what}: {str(exc).replace(tmp, 'the uploaded file')}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return meta
