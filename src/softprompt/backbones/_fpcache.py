"""Fingerprints stored next to a cached backbone's weights, so a second load of a large
model does not rehash every parameter (seconds to minutes); keyed by the weight files'
names, sizes and mtimes, so a changed file is hashed again."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from softprompt.backbones._core import FINGERPRINT_VERSION, fingerprint
from softprompt.files import atomic_write_text

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "softprompt_fingerprints.json"


def _weight_files_key(folder: Path) -> list[list[Any]]:
    files = sorted(folder.glob("*.safetensors"))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _current(data: Any, weights: list[list[Any]]) -> bool:
    return (
        isinstance(data, dict)
        and data.get("fingerprint_version") == FINGERPRINT_VERSION
        and data.get("weights") == weights
        and isinstance(data.get("fingerprints"), dict)
    )


def _read_store(folder: Path) -> Any:
    try:
        return json.loads((folder / FINGERPRINT_FILE).read_text())
    except (OSError, ValueError):
        return {}


def stored_fingerprint(folder: Path, kind: str) -> str | None:
    """The source fingerprint stored for the folder's current weight files, if any."""
    data = _read_store(folder)
    if not _current(data, _weight_files_key(folder)):
        return None
    fp = data["fingerprints"].get(f"{kind}/float32")
    return fp if isinstance(fp, str) else None


def store_fingerprint(folder: Path, kind: str, fp: str) -> None:
    """Record `fp` for the folder's current weight files; a read-only folder is skipped
    (it still loads, it just rehashes next time)."""
    store = folder / FINGERPRINT_FILE
    weights = _weight_files_key(folder)
    data = _read_store(folder)
    if not _current(data, weights):
        data = {"fingerprint_version": FINGERPRINT_VERSION, "weights": weights, "fingerprints": {}}
    data["fingerprints"][f"{kind}/float32"] = fp
    try:
        atomic_write_text(store, json.dumps(data, indent=1, sort_keys=True))
    except OSError as e:
        log.debug("could not store fingerprint in %s: %s", store, e)


def _cached_fingerprint(folder: Path, model: torch.nn.Module, kind: str) -> str:
    """The model's fingerprint, read from the folder's fingerprint file when that was
    written for the same weight files (size + mtime), else computed and stored.

    Only for a model loaded exactly (see `_lossless`): its hash is the source's, stored
    under "<kind>/float32" (the float32 recipe) whatever dtype it was loaded in."""
    fp = stored_fingerprint(folder, kind)
    if fp is None:
        fp = fingerprint(model)
        store_fingerprint(folder, kind, fp)
    return fp
