"""One place that decides where the model runs and in which precision.

`--device auto|cpu|cuda|mps` (`train.device`) picks the device; `--bf16`
(`train.bf16`) turns on autocast in the precision that device does well (bf16 on
CPU and on GPUs that have it, fp16 elsewhere). Every tensor the package creates is
placed with `device=` from the model it is for, so a GPU run needs no other change.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from softprompt.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto", where: str = "train.device") -> torch.device:
    """'auto' -> cuda if present, else mps, else cpu. A device this machine lacks is a
    ConfigError naming `where` (the key or flag), raised before any model loads: torch
    would fail later with a traceback ("Torch not compiled with CUDA enabled")."""
    if not isinstance(name, str) or (name not in DEVICES and not name.startswith("cuda:")):
        raise ConfigError(f"{where}: must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        return _cuda(name, where)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{where}: mps was asked for but is not available; use --device cpu")
    return torch.device(name)


def _cuda(name: str, where: str) -> torch.device:
    """`cuda` or `cuda:N`, checked against the GPUs this process can see."""
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{where}: {name} was asked for but no CUDA GPU is visible; use --device cpu"
        )
    index = name.partition(":")[2]
    count = torch.cuda.device_count()
    if index and not (index.isdigit() and int(index) < count):
        raise ConfigError(
            f"{where}: {name} names no GPU here; this machine has {count} (cuda:0 to "
            f"cuda:{count - 1})"
        )
    return torch.device(name)


def autocast_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision on `device` when enabled; a no-op context otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=autocast_dtype(device))


def process_backend(device: torch.device) -> str:
    """NCCL between GPUs, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to `device`; a no-op where it is already."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
