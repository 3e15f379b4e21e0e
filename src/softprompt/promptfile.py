"""The prompt file: one safetensors file, tensors plus a JSON header.

Safetensors cannot run code on load (unlike pickle) and its header holds a
string map, where the metadata lives as one JSON document: method, task,
labels, backbone name and fingerprint, training config and metrics. A sha256
of the tensor bytes catches corruption that still parses. Writes go to a temp
file in the same folder and are renamed into place, so a crash never leaves a
half-written prompt where a good one was.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from softprompt.errors import PromptFileError

FORMAT = "softprompt/1"


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes so readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_prompt_file(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
    """Save tensors + metadata atomically; returns the path written."""
    path = Path(path)
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = dict(meta, format=FORMAT, sha256=tensor_digest(clean))
    atomic_write_bytes(
        path, st_save(clean, metadata={"softprompt": json.dumps(header, sort_keys=True)})
    )
    return path


def read_prompt_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a prompt file; every failure names the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such prompt file")
    data = path.read_bytes()
    if not data:
        raise PromptFileError(f"{path}: the file is empty; re-save or re-train the prompt")
    try:
        tensors = st_load(data)
        header = _read_header(data)
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PromptFileError(
            f"{path}: not a readable prompt file (truncated or corrupt: {exc}); "
            "re-save it or train again"
        ) from None
    if header.get("format") != FORMAT:
        raise PromptFileError(
            f"{path}: not a softprompt prompt file (format {header.get('format')!r})"
        )
    if tensor_digest(tensors) != header.get("sha256"):
        raise PromptFileError(
            f"{path}: tensor data does not match its checksum (file corrupted); re-train or restore it"
        )
    return tensors, header


def _read_header(data: bytes) -> dict[str, Any]:
    size = int.from_bytes(data[:8], "little")
    if size <= 0 or 8 + size > len(data):
        raise ValueError("header length runs past the end of the file")
    raw = json.loads(data[8 : 8 + size].decode("utf-8"))
    meta = raw.get("__metadata__", {}).get("softprompt")
    if meta is None:
        raise ValueError("no softprompt metadata in the header")
    header = json.loads(meta)
    if not isinstance(header, dict):
        raise ValueError("softprompt metadata is not a JSON object")
    return header


def check_backbone(path: str | Path, meta: dict[str, Any], name: str, fingerprint: str) -> None:
    """Refuse a prompt trained on other weights: its vectors mean nothing there."""
    want = meta.get("backbone", {})
    if want.get("fingerprint") != fingerprint:
        raise PromptFileError(
            f"{path}: made for backbone {want.get('name')!r} (fingerprint {want.get('fingerprint')}), "
            f"but the loaded backbone is {name!r} (fingerprint {fingerprint}); "
            f"load it with --backbone {want.get('name')}"
        )
