"""GGUF -> a cached HF folder: one conversion per (file, dtype) under
``$SOFTPROMPT_HOME/backbones/``, written to a temporary folder and renamed into place so
an interrupted conversion never leaves half a cache; later loads read the folder."""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from softprompt.backbones._catalogue import _module_installed
from softprompt.backbones._core import dtype_name, fingerprint
from softprompt.backbones._fpcache import _weight_files_key
from softprompt.backbones._gguf import Unsupported, write_folder
from softprompt.backbones._paths import backbone_cache_root
from softprompt.errors import BackboneError

log = logging.getLogger(__name__)

# What a cache folder was made from (file, size, mtime, content sha256, dtype, source
# fingerprint).
SOURCE_FILE = "softprompt_source.json"
CACHE_FORMAT = 1


def gguf_source_key(gguf_path: Path) -> str:
    """Cache key of a GGUF file: hash of its resolved path, size and mtime."""
    st = gguf_path.stat()
    raw = f"{gguf_path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{CACHE_FORMAT}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def gguf_cache_dir(
    gguf_path: Path, cache_name: str | None = None, dtype: torch.dtype = torch.float32
) -> Path:
    """Where the dequantized copy of a GGUF file in `dtype` is (or will be) cached: one
    folder per dtype, the float32 one under the name earlier versions used."""
    if cache_name is None:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", gguf_path.stem)[:60]
        cache_name = f"gguf-{stem}-{gguf_source_key(gguf_path)}"
    if dtype != torch.float32:
        cache_name = f"{cache_name}-{dtype_name(dtype)}"
    return backbone_cache_root() / cache_name


def _source_record(folder: Path) -> dict[str, Any]:
    try:
        source = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return source if isinstance(source, dict) else {}


def _cache_is_valid(folder: Path, source: Path, dtype: torch.dtype = torch.float32) -> bool:
    """The folder holds a finished conversion of the file `source` in `dtype`; a cache in
    a narrower dtype also needs the source fingerprint recorded at conversion (its own
    rounded weights would hash differently)."""
    record = _source_record(folder)
    if record.get("dtype", "float32") != dtype_name(dtype):
        return False
    if dtype != torch.float32 and not isinstance(record.get("fingerprint"), str):
        return False
    if not folder.is_dir() or not _same_source(record, source):
        return False
    if not (folder / "config.json").is_file():
        return False
    return bool(_weight_files_key(folder))


def _same_source(record: dict[str, Any], source: Path) -> bool:
    """The record names this file: by path, size and mtime (cheap, on every load), or
    else by content, for the same file installed elsewhere (another venv or clone: another
    path and mtime, which made every install convert again over the others' cache)."""
    if record.get("key") == gguf_source_key(source):
        return True
    digest = record.get("sha256")
    if not isinstance(digest, str) or record.get("cache_format") != CACHE_FORMAT:
        return False
    return record.get("size") == source.stat().st_size and _content_digest(source) == digest


def _content_digest(path: Path) -> str:
    """sha256 of the file (1.5B GGUF: a few seconds, against minutes to convert), once
    per process while its path, size and mtime stay (a load checks its cache twice)."""
    st = path.stat()
    return _digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> str:
    """Dequantize a GGUF file into a plain HF folder (safetensors in `dtype` + config +
    tokenizer) at ``out_dir``, tensor by tensor (backbones/_gguf.py); return the source
    fingerprint. Architectures whose tensors transformers rewrites as a set (MoE, ...)
    go through transformers' float32 loader instead."""
    if not _module_installed("gguf"):
        raise BackboneError(
            f"reading {gguf_path.name} needs the gguf package; install it with: pip install gguf"
        )
    try:
        return write_folder(gguf_path, out_dir, dtype)
    except Unsupported as e:
        log.info("%s: %s; converting through transformers' float32 loader", gguf_path.name, e)
    except BackboneError:
        raise
    except Exception as e:
        raise BackboneError(f"cannot read the GGUF file {gguf_path}: {e}") from e
    return _convert_via_transformers(gguf_path, out_dir, dtype)


def _convert_via_transformers(gguf_path: Path, out_dir: Path, dtype: torch.dtype) -> str:
    """transformers' GGUF loader (all tensors dequantized to float32 at once), then cast."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = gguf_path.parent, gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename, local_files_only=True)
        src = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=filename, dtype=torch.float32, local_files_only=True
        )
    except BackboneError:
        raise
    except Exception as e:
        raise BackboneError(f"cannot read the GGUF file {gguf_path}: {e}") from e
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # A model loaded from GGUF refuses save_pretrained; move its weights into a fresh one
    # (built on the meta device: random init of 135M parameters would cost ~3 s).
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(src.state_dict(), strict=True, assign=True)
    fresh.tie_weights()
    del src
    gc.collect()
    leftover = [n for n, p in fresh.named_parameters() if p.is_meta]
    if leftover:
        raise BackboneError(f"converting {gguf_path} left weights unset: {leftover[:5]}")
    fp = fingerprint(fresh)
    fresh.to(dtype).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return fp


_ABANDONED_AFTER_S = 3600.0


def _remove_abandoned(parent: Path, name: str, keep: Path) -> None:
    """Delete temporary folders left by conversions that were killed (older than an hour;
    a younger one may belong to a conversion still running in another process)."""
    now = time.time()
    for p in parent.glob(f".{name}.tmp-*"):
        try:
            if p != keep and now - p.stat().st_mtime > _ABANDONED_AFTER_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def ensure_gguf_cache(
    gguf_path: Path,
    cache_dir: Path,
    *,
    convert: Callable[..., str | None] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Make sure ``cache_dir`` holds the dequantized copy of ``gguf_path`` in `dtype`;
    return it.

    The copy is written to a temporary folder next to ``cache_dir`` and renamed into
    place, so an interrupted conversion never leaves a half-written cache. A stale
    cache (made from another file, or another version of it) is replaced. `convert`
    (gguf_path, out_dir[, dtype=]) may return the source fingerprint, kept with the cache.
    """
    convert = convert or convert_gguf
    if _cache_is_valid(cache_dir, gguf_path, dtype):
        return cache_dir
    key = gguf_source_key(gguf_path)
    parent = cache_dir.parent
    _check_room(gguf_path, parent, dtype)
    tmp = _make_temp_folder(cache_dir)
    _remove_abandoned(parent, cache_dir.name, keep=tmp)
    log.warning(
        "converting %s to a %s cache at %s (one time)", gguf_path.name, dtype_name(dtype), cache_dir
    )
    moved = False
    try:
        made = convert(gguf_path, tmp) if dtype == torch.float32 else convert(gguf_path, tmp, dtype)
        if dtype != torch.float32 and not isinstance(made, str):
            raise BackboneError(f"converting {gguf_path.name} gave no source fingerprint")
        _write_source_record(tmp, _new_source_record(gguf_path, key, dtype, made))
        moved = _swap_in(tmp, cache_dir, gguf_path, dtype)
    finally:
        if not moved:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in parent.glob(f".{cache_dir.name}.old-*"):
            shutil.rmtree(old, ignore_errors=True)
    return cache_dir


def _check_room(gguf_path: Path, parent: Path, dtype: torch.dtype) -> None:
    """Refuse a conversion the disk cannot hold before it starts: a 1.5B model is 7 GB in
    float32 and minutes of work, which a full disk would otherwise end halfway."""
    need = _converted_bytes(gguf_path, dtype)
    if need is None:
        return
    need += 64 * 2**20  # config, tokenizer, safetensors header
    probe = parent
    while not probe.exists():  # the cache root is made when the conversion starts
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free >= need:
        return
    half = ", or load it with --dtype bfloat16 (half the size)" if dtype == torch.float32 else ""
    raise BackboneError(
        f"converting {gguf_path.name} to a {dtype_name(dtype)} cache needs about "
        f"{need / 1e9:.1f} GB under {parent}, and {free / 1e9:.1f} GB are free: free some "
        f"space there, or set SOFTPROMPT_HOME to a disk with room{half}"
    )


def _converted_bytes(gguf_path: Path, dtype: torch.dtype) -> int | None:
    """The converted weights' bytes: the GGUF's element count x the dtype's size (None for
    another kind of source, or without the gguf package, which converting needs anyway)."""
    if gguf_path.suffix.lower() != ".gguf" or not _module_installed("gguf"):
        return None
    from gguf import GGUFReader

    try:
        elements = sum(int(t.n_elements) for t in GGUFReader(gguf_path).tensors)
    except (ValueError, OSError):  # not a readable GGUF: the converter says why
        return None
    return elements * torch.empty(0, dtype=dtype).element_size()


def _make_temp_folder(cache_dir: Path) -> Path:
    """A private folder beside ``cache_dir`` to convert into: on the same file system, so
    the finished conversion is renamed into place in one step."""
    parent = cache_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=parent))
    except OSError as e:
        raise BackboneError(
            f"cannot write the backbone cache under {parent}: {e}; "
            "set SOFTPROMPT_HOME to a writable folder"
        ) from e


def _new_source_record(
    gguf_path: Path, key: str, dtype: torch.dtype, made: str | None
) -> dict[str, Any]:
    """What the cache was made from, as `_cache_is_valid` reads it back on every later
    load (and as caches already on disk hold it: the fields must not change; `sha256`
    came later, so a cache without it is matched by `key` alone)."""
    source: dict[str, Any] = {
        "key": key,
        "gguf": str(gguf_path.resolve()),
        "size": gguf_path.stat().st_size,
        "mtime_ns": gguf_path.stat().st_mtime_ns,
        "cache_format": CACHE_FORMAT,
        "dtype": dtype_name(dtype),
        "sha256": _content_digest(gguf_path),
    }
    if isinstance(made, str):
        source["fingerprint"] = made
    return source


def _write_source_record(tmp: Path, source: dict[str, Any]) -> None:
    """Record the source in the finished conversion and open its permissions: mkdtemp
    makes a private folder, and the cache must read like a normal one."""
    (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1, sort_keys=True))
    tmp.chmod(0o755)
    for f in tmp.iterdir():
        if f.is_file():
            f.chmod(0o644)


def _swap_in(tmp: Path, cache_dir: Path, source: Path, dtype: torch.dtype) -> bool:
    """Rename the finished conversion to ``cache_dir``; a stale or broken cache there is
    moved aside first (the caller removes it). False when another process finished first
    and its copy is good (this one is then left to the caller to remove)."""
    if cache_dir.exists():  # stale or broken: move it aside, then swap in the new one
        trash = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.old-", dir=cache_dir.parent))
        try:
            os.replace(cache_dir, trash / "old")
        except OSError:
            pass
    try:
        os.replace(tmp, cache_dir)
    except OSError:
        # Another process finished first; use its copy if it is good.
        if not _cache_is_valid(cache_dir, source, dtype):
            raise
        return False
    return True
