"""A built-in GGUF split over part packages, assembled once into the cache
(backbones/_assemble.py): reused while it holds the parts' bytes, wherever they are
installed, and rebuilt when they change. Tiny byte files stand in for the parts."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from split_parts import install_parts  # tests/backbones/split_parts.py

import softprompt.backbones._assemble as assemble
import softprompt.backbones._catalogue as catalogue

WHOLE = bytes(range(256)) * 40  # 10,240 bytes, cut into three parts


@pytest.fixture
def split(tmp_path, monkeypatch):
    """Assemble the fake built-in from the packages under a given install root."""
    monkeypatch.setenv("SOFTPROMPT_HOME", str(tmp_path / "home"))
    fake = catalogue._split_gguf("fake-split", "test", "fake-part", "1.0", 3, len(WHOLE))

    def assemble_from(folders: dict[str, Path]) -> Path:
        monkeypatch.setattr(assemble, "_module_dir", lambda module: folders.get(module))
        return assemble._assembled_gguf(fake)

    return assemble_from


def _written(path: Path) -> tuple[int, int]:
    """Which write of the file this is: a rebuild renames a new inode into place."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_the_same_parts_installed_at_another_path_reuse_the_assembled_gguf(tmp_path, split):
    """Two venvs hold the same packages at other paths, with other mtimes (pip stamps
    the install time): neither rebuilds the GGUF the other assembled, which would make
    every cached conversion of it stale (minutes at 1.5B)."""
    first = install_parts(tmp_path / "venv-a", WHOLE)
    target = split(first)
    assert target.read_bytes() == WHOLE
    written = _written(target)
    second = install_parts(tmp_path / "venv-b", WHOLE)
    for folder in second.values():
        for part in (folder / "data").iterdir():
            os.utime(part, ns=(1_000_000_000, 1_000_000_000))
    assert split(second) == target
    assert _written(target) == written
    assert split(first) == target and _written(target) == written
    record = json.loads(target.with_name(target.name + ".json").read_text())
    assert [Path(path).parent.parent.parent for path, _, _ in record] == [
        (tmp_path / "venv-a").resolve()
    ] * 3  # the record names the last install seen, in the format earlier versions read


def test_a_record_written_by_earlier_versions_is_kept(tmp_path, split):
    """A record as the earlier code wrote it (resolved path, size, mtime of each part)
    for the same files: the GGUF is reused and the record is not rewritten."""
    folders = install_parts(tmp_path / "venv", WHOLE)
    target = split(folders)
    record = target.with_name(target.name + ".json")
    parts = [next((f / "data").iterdir()) for f in folders.values()]
    old = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in parts]
    record.write_text(json.dumps(old))
    written, record_written = _written(target), _written(record)
    assert split(folders) == target
    assert _written(target) == written and _written(record) == record_written


@pytest.mark.parametrize("where", ["same path", "another path"])
def test_changed_parts_of_the_same_size_rebuild_the_gguf(tmp_path, split, where):
    target = split(install_parts(tmp_path / "venv-a", WHOLE))
    changed = bytearray(WHOLE)
    changed[len(WHOLE) // 2] ^= 0xFF  # one byte in the middle part
    root = tmp_path / ("venv-a" if where == "same path" else "venv-b")
    shutil.rmtree(root, ignore_errors=True)
    assert split(install_parts(root, bytes(changed))) == target
    assert target.read_bytes() == bytes(changed)
