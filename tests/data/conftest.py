"""Helpers to write small data files for the data tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str | bytes], Path]:
    """Write text or bytes to a file under tmp_path and return its path."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return _write


@pytest.fixture
def write_jsonl(write) -> Callable[[str, list[dict]], Path]:
    def _write(name: str, records: list[dict]) -> Path:
        return write(name, "".join(json.dumps(r) + "\n" for r in records))

    return _write
