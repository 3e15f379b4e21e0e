"""The prompt file: one safetensors file, tensors plus a JSON header.

Safetensors cannot run code on load (unlike pickle) and its header holds a
string map, where the metadata lives as one JSON document: method, task,
labels, backbone name and fingerprint, training config and metrics.

Format "softprompt/2": a sha256 over the header (canonical JSON: sorted keys,
compact separators) and the tensor bytes, so a flipped byte in a template or a
label word fails the check like one in a tensor does. "softprompt/1" files
(checksum over tensors only) still load: they are migrated in memory. The header's
shape is checked before use, and tensors holding NaN/inf are refused both ways.
Writes go to a temp file in the same folder and are renamed into place (with the
mode the umask gives, as other tools do), so a crash never leaves a half-written
prompt where a good one was.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from softprompt.errors import PromptFileError
from softprompt.files import atomic_write_bytes

FORMAT = "softprompt/2"


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def canonical(header: dict[str, Any]) -> bytes:
    """The header as the checksum sees it: one spelling per document."""
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


def file_checksum(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the canonical header (without its own checksum) and the tensors."""
    body = {k: v for k, v in header.items() if k != "sha256"}
    return hashlib.sha256(canonical(body) + b"\n" + tensor_digest(tensors).encode()).hexdigest()


def refuse_non_finite(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """NaN/inf values are a diverged run's garbage: never written, never read."""
    bad = sorted(
        name
        for name, t in tensors.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    )
    if bad:
        raise PromptFileError(
            f"{path}: tensor(s) {', '.join(bad)} hold NaN/inf values (a diverged run); "
            "train again with a lower train.lr"
        )


def save_prompt_file(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
    """Save tensors + metadata atomically; returns the path written."""
    path = Path(path)
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    refuse_non_finite(clean, path)
    header = json.loads(json.dumps(dict(meta, format=FORMAT)))  # as a reader will see it
    header["sha256"] = file_checksum(header, clean)
    metadata = {"softprompt": canonical(header).decode("utf-8")}
    atomic_write_bytes(path, st_save(clean, metadata=metadata))
    return path


def read_prompt_file(
    path: str | Path, *, check_metadata: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a prompt file; every failure names the file and what to do.

    `check_metadata=False` skips the prompt-specific header shape (method, task,
    backbone) for files used as a plain checksummed tensor store."""
    path = Path(path)
    if path.is_dir():
        raise PromptFileError(_folder_message(path))
    if not path.is_file():
        raise PromptFileError(f"{path}: no such prompt file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PromptFileError(f"{path}: cannot read it ({exc.strerror})") from None
    if not data:
        raise PromptFileError(f"{path}: the file is empty; re-save or re-train the prompt")
    try:
        tensors = st_load(data)
        header = _read_header(data)
    except (SafetensorError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        if _looks_pickled(data):
            raise PromptFileError(
                f"{path}: this is a pickle (torch.save, .bin, .pt), not a safetensors file; "
                "softprompt never loads pickles (unpickling can run code); give the "
                ".safetensors prompt file softprompt wrote"
            ) from None
        raise PromptFileError(
            f"{path}: not a readable prompt file (truncated or corrupt: {exc}); "
            "re-save it or train again"
        ) from None
    header = _verified(path, header, tensors)
    refuse_non_finite(tensors, path)
    if check_metadata:
        check_meta(path, header)
    return tensors, header


def _looks_pickled(data: bytes) -> bool:
    """A pickle (protocol 2-5: PROTO 0x80, the protocol, then an opcode, never 0x00) or
    torch.save's zip archive holding one. Asked only once safetensors failed: its header
    length may start 80 02 too, but is then followed by zeros (any header under 64 KiB)."""
    if data.startswith(b"PK\x03\x04"):
        return True
    return len(data) > 2 and data[0] == 0x80 and 2 <= data[1] <= 5 and data[2] != 0


def _folder_message(path: Path) -> str:
    """A folder given where a prompt file goes: say so, and what to give instead."""
    if (path / "adapter_config.json").is_file():
        return (
            f"{path}: is a folder holding a PEFT adapter (adapter_config.json), not a prompt "
            f"file; turn it into one with `softprompt import-peft {path} --backbone BASE "
            "--out prompt.safetensors`"
        )
    inside = path / "prompt.safetensors"
    hint = f"give {inside}" if inside.is_file() else "give the .safetensors prompt file"
    return f"{path}: is a folder, not a prompt file; {hint}"


def _verified(
    path: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Check the checksum the header's format defines; older formats are migrated."""
    version = header.get("format")
    if version == FORMAT:
        if file_checksum(header, tensors) != header.get("sha256"):
            raise PromptFileError(
                f"{path}: header or tensor data does not match its checksum (file corrupted); "
                "re-train or restore it"
            )
        return header
    if version in MIGRATIONS:
        return MIGRATIONS[version](path, header, tensors)
    raise PromptFileError(
        f"{path}: not a softprompt prompt file this version reads (format {str(version)[:40]!r}; "
        f"known: {', '.join([FORMAT, *MIGRATIONS])})"
    )


def _from_v1(
    path: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """softprompt/1: the checksum covers the tensors only. Same fields otherwise."""
    if tensor_digest(tensors) != header.get("sha256"):
        raise PromptFileError(
            f"{path}: tensor data does not match its checksum (file corrupted); re-train or restore it"
        )
    migrated = dict(header, format=FORMAT)
    migrated["sha256"] = file_checksum(migrated, tensors)
    return migrated


MIGRATIONS = {"softprompt/1": _from_v1}


def _read_header(data: bytes) -> dict[str, Any]:
    size = int.from_bytes(data[:8], "little")
    if size <= 0 or 8 + size > len(data):
        raise ValueError("header length runs past the end of the file")
    raw = json.loads(data[8 : 8 + size].decode("utf-8"))
    meta = raw.get("__metadata__", {}).get("softprompt") if isinstance(raw, dict) else None
    if not isinstance(meta, str):
        raise ValueError("no softprompt metadata in the header")
    header = json.loads(meta)
    if not isinstance(header, dict):
        raise ValueError("softprompt metadata is not a JSON object")
    return header


def check_meta(path: str | Path, meta: dict[str, Any]) -> None:
    """The header's shape, checked before anything indexes it (no KeyError tracebacks).
    Whether its method and task options are ones this version knows is checked where a
    prompt becomes a model (`softprompt.model.check_known`): this file format knows no
    registry."""
    from softprompt.validate import Invalid, coerce

    problems: list[str] = []
    for key, hint in _META_FIELDS.items():
        try:
            coerce(meta.get(key), hint)
        except Invalid as exc:
            problems.append(f"{key}: {exc}")
    for (section, key), hint in _NESTED.items():
        if not problems:
            try:
                coerce(meta[section].get(key), hint)
            except Invalid as exc:
                problems.append(f"{section}.{key}: {exc}")
    if problems:
        raise malformed(path, problems)


def malformed(path: str | Path, problems: list[str]) -> PromptFileError:
    """The one error for a header whose fields are wrong, naming the first few."""
    return PromptFileError(
        f"{path}: the prompt file's metadata is malformed ({'; '.join(problems[:5])}); "
        "re-save it or train again"
    )


_NESTED: dict[tuple[str, str], Any] = {
    ("method", "name"): str,
    ("method", "options"): dict[str, Any],
    ("backbone", "name"): str,
    ("backbone", "fingerprint"): str,
}
_META_FIELDS: dict[str, Any] = {
    "method": dict[str, Any],
    "task": dict[str, Any],
    "backbone": dict[str, str],
    "trainable_parameters": int,
    "dataset": str | None,
    "metrics": dict[str, Any] | None,
    "run": dict[str, Any] | None,
    "train": dict[str, Any] | None,
}


def _adapted(wanted: str, loaded: str) -> str:
    """Why two fingerprints differ when one names a merged LoRA adapter (backbones/adapter.py:
    `<base>+lora-<hex>`); empty when neither does."""
    mark = "+lora-"
    if mark in wanted and mark not in loaded:
        return "with a LoRA adapter merged in; load it with the same --backbone-adapter"
    if mark in loaded and mark not in wanted:
        return "without a LoRA adapter; load it without --backbone-adapter"
    if mark in wanted and wanted.split(mark)[0] == loaded.split(mark)[0]:
        return "with another LoRA adapter merged in; use the adapter it was trained with"
    return ""


def check_backbone(path: str | Path, meta: dict[str, Any], name: str, fingerprint: str) -> None:
    """Refuse a prompt trained on other weights: its vectors mean nothing there."""
    want = meta.get("backbone", {})
    adapted = _adapted(str(want.get("fingerprint")), fingerprint)
    if want.get("fingerprint") != fingerprint and adapted:
        raise PromptFileError(f"{path}: made for backbone {want.get('name')!r} {adapted}")
    if want.get("fingerprint") != fingerprint:
        raise PromptFileError(
            f"{path}: made for backbone {want.get('name')!r} (fingerprint {want.get('fingerprint')}), "
            f"but the loaded backbone is {name!r} (fingerprint {fingerprint}); "
            f"load it with --backbone {want.get('name')}"
        )
