"""Built-ins whose GGUF is split over several pip packages (PyPI's file size limit):
the parts are raw byte ranges of one file, concatenated once into the cache."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from softprompt.backbones._catalogue import _Builtin, _missing_package, _module_dir
from softprompt.backbones._paths import backbone_cache_root
from softprompt.errors import BackboneError
from softprompt.files import atomic_write_text


def _assembled_gguf(builtin: _Builtin) -> Path:
    """One GGUF file from a built-in's part packages, concatenated once into the cache
    (the parts are raw byte ranges of it); rebuilt when a part changes."""
    parts = []
    for module in builtin.parts:
        folder = _module_dir(module)
        if folder is None:
            raise _missing_package(builtin, module.replace("_", "-"))
        found = sorted((folder / "data").glob("part*.bin"))
        if len(found) != 1:
            raise BackboneError(
                f"{folder / 'data'} should hold one part*.bin file: the package {module} "
                f"looks broken; reinstall with: {builtin.install}"
            )
        parts.append(found[0])
    # resolved: each worktree reaches the one shared venv through its own .venv symlink,
    # and a stamp that named the link rebuilt the GGUF (and so every cached dtype of it)
    # whenever another checkout loaded the backbone
    stamp = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in parts]
    target = backbone_cache_root() / "sources" / f"{builtin.name}.gguf"
    record = target.with_name(target.name + ".json")
    if _still_assembled(target, record, stamp, parts, builtin.gguf_bytes):
        return target
    total = sum(p.stat().st_size for p in parts)
    if total != builtin.gguf_bytes:
        raise BackboneError(
            f"backbone {builtin.name!r}: its parts hold {total:,} bytes, expected "
            f"{builtin.gguf_bytes:,}; reinstall with: {builtin.install}"
        )
    _concatenate(parts, target)
    atomic_write_text(record, json.dumps(stamp))
    return target


def _still_assembled(target: Path, record: Path, stamp: list, parts: list[Path], size: int) -> bool:
    """`target` already holds these parts: the record names them (path, size, mtime: the
    cheap check, and the format every earlier version wrote and reads), or else their
    bytes equal the target's, as when a second install (another venv) holds the same
    packages at other paths with other mtimes (pip stamps files with the install time).
    Then only the record is rewritten: rewriting the GGUF would change its mtime and so
    make every cached conversion of it stale (minutes at 1.5B)."""
    try:
        if target.stat().st_size != size:
            return False
        if _resolved(json.loads(record.read_text())) == stamp:
            return True
    except (OSError, ValueError, TypeError):
        pass
    try:
        if not _same_bytes(target, parts):
            return False
    except OSError:
        return False
    atomic_write_text(record, json.dumps(stamp))
    return True


def _same_bytes(target: Path, parts: list[Path]) -> bool:
    """Whether `target` is the parts concatenated, byte for byte (stops at the first
    difference; a full pass reads the GGUF twice, seconds against a reconversion)."""
    if target.stat().st_size != sum(p.stat().st_size for p in parts):
        return False
    with target.open("rb") as whole:
        for part in parts:
            with part.open("rb") as handle:
                while chunk := handle.read(1 << 24):
                    if whole.read(len(chunk)) != chunk:
                        return False
    return True


def _resolved(stamp: list) -> list:
    """A stored stamp with its paths resolved (records written before they were)."""
    return [[str(Path(path).resolve()), size, mtime] for path, size, mtime in stamp]


def _concatenate(parts: list[Path], target: Path) -> None:
    """Write the parts one after another into `target`, atomically (temp file + rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 24)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
