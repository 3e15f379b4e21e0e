"""The store's index document: entries, `task@version` references and the on-disk format.

Kept apart from the store's locking and file handling (softprompt.serve.store) because
this is what a hostile or corrupt `index.json` is checked against: every entry's file
must be the store's own name `files/<task>@<v>.safetensors`, so an index cannot name a
path outside the store. The names here stay importable from softprompt.serve.store.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from softprompt.errors import SoftPromptError

INDEX_FORMAT = "softprompt-store/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_FILE = re.compile(r"^files/([A-Za-z0-9][A-Za-z0-9_-]{0,63})@([1-9][0-9]*)\.safetensors$")


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


@dataclass
class _Index:
    """The index as read: entries, each task's highest version ever, and the journal."""

    tasks: dict[str, list[Entry]] = field(default_factory=dict)
    high: dict[str, int] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)  # files written/dropped, not named

    def next_version(self, task: str) -> int:
        return max([self.high.get(task, 0), *(e.version for e in self.tasks.get(task, []))]) + 1

    def to_json(self) -> str:
        high = dict(self.high)
        for task, versions in self.tasks.items():
            high[task] = max([high.get(task, 0), *(e.version for e in versions)])
        body = {
            "format": INDEX_FORMAT,
            "tasks": {t: [asdict(e) for e in vs] for t, vs in sorted(self.tasks.items()) if vs},
            "high": dict(sorted(high.items())),
            "pending": sorted(set(self.pending)),
        }
        return json.dumps(body, indent=1, sort_keys=True)


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


def _file_name(task: str, version: int) -> str:
    return f"files/{task}@{version}.safetensors"


def _parse_index(raw: Any) -> _Index:
    """The index document, checked: entry files must be the store's own names."""
    if raw.get("format") != INDEX_FORMAT:
        raise ValueError(f"format {str(raw.get('format'))[:40]!r}")
    tasks = {}
    for task, versions in raw["tasks"].items():
        entries = [Entry(**e) for e in versions]
        for e in entries:
            if not isinstance(e.version, int) or isinstance(e.version, bool) or e.version < 1:
                raise ValueError(f"entry {task!r} has the version {str(e.version)[:20]!r}")
            if e.task != task or e.file != _file_name(task, e.version):
                raise ValueError(f"entry {task!r} names the file {str(e.file)[:80]!r}")
        tasks[check_task_name(task)] = entries
    high = {check_task_name(t): int(v) for t, v in raw.get("high", {}).items()}
    pending = list(raw.get("pending", []))
    for name in pending:
        if not isinstance(name, str) or not _FILE.match(name):
            raise ValueError(f"pending names the file {str(name)[:80]!r}")
    return _Index(tasks, high, pending)
