"""Resumable training state in one safetensors file (no pickle).

Holds the trainable tensors, AdamW's moment tensors, and a JSON header with
the step, early-stopping state and metric history. The learning rate and the
data order are pure functions of the step, so nothing else is needed for a
resumed run to end exactly where an uninterrupted one does.

Frozen parameters are left out: a model that holds a copy of the backbone (LoRA's
tuned copy) would otherwise write the whole backbone at every save (650 MB for a
135M model, 6 GB for a 1.5B one), and the resumed run rebuilds them from the
backbone anyway. Checkpoints written before this, with the frozen tensors in,
still resume: those keys are dropped on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from softprompt.errors import PromptFileError
from softprompt.files import atomic_write_bytes
from softprompt.promptfile import refuse_non_finite


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    config: dict[str, Any] | None = None,
) -> None:
    """`config`: the resumable config (train/run_dir.py), checked when the run resumes."""
    # cloned: a module shared by several tasks appears under each task's name
    tensors = {f"model.{k}": v.detach().cpu().clone() for k, v in _saved_state(model).items()}
    opt = optimizer.state_dict()
    for index, slots in opt["state"].items():
        for slot, value in slots.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{index}.{slot}"] = value.detach().cpu().contiguous()
    header = {"state": state, "param_groups": opt["param_groups"], "config": config}
    refuse_non_finite(tensors, path)
    atomic_write_bytes(path, st_save(tensors, metadata={"checkpoint": json.dumps(header)}))


def _saved_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without its frozen parameters (buffers are kept)."""
    state = model.state_dict(keep_vars=True)
    return {k: v for k, v in state.items() if not _frozen(v)}


def _frozen(value: torch.Tensor) -> bool:
    return isinstance(value, torch.nn.Parameter) and not value.requires_grad


def _check_matches(path: Path, model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """A checkpoint from another method or task config cannot continue this run."""
    expected = {k: tuple(v.shape) for k, v in _saved_state(model).items()}
    found = {k: tuple(v.shape) for k, v in saved.items()}
    if expected != found:
        differ = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
        detail = ", ".join(
            f"{k}: checkpoint {found.get(k)} vs config {expected.get(k)}" for k in differ[:3]
        )
        raise PromptFileError(
            f"{path}: checkpoint was made with a different method or task config ({detail}); "
            "resume with the original config, or start without --resume in a new --out folder"
        )


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        data = Path(path).read_bytes()
        tensors = st_load(data)
        size = int.from_bytes(data[:8], "little")
        header = json.loads(json.loads(data[8 : 8 + size])["__metadata__"]["checkpoint"])
        if not isinstance(header, dict) or not isinstance(header.get("state"), dict):
            raise ValueError("no training state in the header")
    except (SafetensorError, ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
        reason = "its header is nested too deeply" if isinstance(exc, RecursionError) else exc
        raise PromptFileError(
            f"{path}: checkpoint unreadable ({reason}); start without --resume"
        ) from None
    return tensors, header


def checkpoint_config(path: Path) -> dict[str, Any] | None:
    """The resumable config a checkpoint was written with (None: an older checkpoint)."""
    return _read(path)[1].get("config")


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    tensors, header = _read(path)
    refuse_non_finite(tensors, path)
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    frozen = {k for k, v in model.state_dict(keep_vars=True).items() if _frozen(v)}
    model_state = {k: v for k, v in model_state.items() if k not in frozen}  # older checkpoints
    _check_matches(path, model, model_state)
    model.load_state_dict(model_state, strict=False)  # the frozen keys stay as built
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, slot = key.split(".", 2)
            slots.setdefault(int(index), {})[slot] = value
    optimizer.load_state_dict({"state": slots, "param_groups": header["param_groups"]})
    return header["state"]
