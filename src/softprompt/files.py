"""Atomic file writes and softprompt's own folder, on the ground floor so every layer
writes files the same way and finds its caches in one place.

A write goes to a temp file in the same folder, is flushed to disk and renamed into
place (with the mode the umask gives, as other tools do), so a reader sees the old
file or the new one, never a mix, and a crash never leaves half a file where a good
one was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

DEFAULT_HOME = "~/.cache/softprompt"


def softprompt_home() -> Path:
    """The folder for softprompt's own files (converted backbones, downloads, unpacked data
    sets): ``$SOFTPROMPT_HOME``, so tests and CI can isolate state, or ``~/.cache/softprompt``.
    Not created here; writers create what they need inside it."""
    return Path(os.environ.get("SOFTPROMPT_HOME") or DEFAULT_HOME).expanduser()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes so readers see the old file or the new one, never a mix.

    An OSError (a full disk, a read-only folder) is raised again naming `path`: a failed
    write to an open file names no file, and the temp file's name means nothing to a user."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would hide it from others
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error (same errno, so the same OSError subclass) with `path` as its file."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
