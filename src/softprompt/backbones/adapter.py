"""A PEFT LoRA adapter merged into the frozen backbone at load (`--backbone-adapter DIR`).

Production systems pair the two: "LoRA for a domain-adapted backbone, with prompt tuning
for task-specific variants on top". The adapter is merged once, ``W += scale * B @ A``
(``scale = lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA; transposed for
GPT-2's Conv1D, ``fan_in_fan_out``), so the prompt code below sees an ordinary frozen
model and pays nothing per token.

Only ``adapter_model.safetensors`` is read: an ``adapter_model.bin`` is a pickle, and
unpickling a downloaded file can run code, so it is refused with the way to convert it.

The fingerprint of the adapted backbone is ``<base fingerprint>+lora-<16 hex>``, the hex
a sha256 of the adapter's merge settings and tensors. The merged weights are a function
of exactly those two, so this names them (and, like the base fingerprint, it does not
move with the dtype the weights are held in). A prompt trained on the adapted backbone
refuses the plain one, and the other way round; promptfile.check_backbone says why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from softprompt.backbones._core import Backbone
from softprompt.errors import BackboneError
from softprompt.validate import load_json_bounded

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLED_FILES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
PREFIX = "base_model.model."  # PeftModel's path to the wrapped model's modules
MARK = "+lora-"  # in a fingerprint: a LoRA adapter is merged into these weights


def merge_lora_adapter(backbone: Backbone, folder: str | Path) -> Backbone:
    """`backbone` with the LoRA adapter in `folder` merged into its weights (in place:
    the backbone was just loaded for this) and the adapted fingerprint."""
    folder = Path(folder)
    config = _read_config(folder)
    if backbone.quantize:
        raise BackboneError(
            f"--backbone-adapter {folder}: cannot merge into a {backbone.quantize}-quantized "
            "backbone; drop --quantize"
        )
    tensors = _read_tensors(folder)
    pairs = _pairs(folder, tensors)
    modules = dict(backbone.model.named_modules())
    for path, (a, b) in sorted(pairs.items()):
        _merge_one(folder, modules.get(path), path, a, b, config)
    digest = _digest(config, tensors)
    return dataclasses.replace(backbone, fingerprint=f"{backbone.fingerprint}{MARK}{digest}")


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise BackboneError(f"--backbone-adapter {folder}: not a folder (give a PEFT LoRA folder)")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise BackboneError(f"--backbone-adapter {folder}: no {CONFIG_FILE}; is it a PEFT folder?")
    config = load_json_bounded(path.read_text(encoding="utf-8"), f"--backbone-adapter {path}")
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        found = config.get("peft_type") if isinstance(config, dict) else None
        raise BackboneError(
            f"--backbone-adapter {folder}: peft_type is {found!r}; only a LoRA adapter merges"
        )
    unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern") if config.get(k)]
    if unsupported:
        raise BackboneError(
            f"--backbone-adapter {folder}: {', '.join(unsupported)} cannot be merged here; "
            "merge it with PEFT's merge_and_unload() and pass the merged model as --backbone"
        )
    if not isinstance(config.get("r"), int) or config["r"] < 1:
        raise BackboneError(f"--backbone-adapter {path}: r must be a whole number >= 1")
    return config


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / WEIGHTS_FILE
    if not path.is_file():
        pickled = [name for name in PICKLED_FILES if (folder / name).is_file()]
        if pickled:
            raise BackboneError(
                f"--backbone-adapter {folder}: {pickled[0]} is a pickle, which softprompt never "
                f"loads (it can run code); save the adapter as {WEIGHTS_FILE} "
                "(PEFT's save_pretrained does by default)"
            )
        raise BackboneError(f"--backbone-adapter {folder}: no {WEIGHTS_FILE}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise BackboneError(
            f"--backbone-adapter {path}: not a readable safetensors file ({exc})"
        ) from None


def _pairs(folder: Path, tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, ...]]:
    """Module path -> (A (r, in), B (out, r)), from PEFT's saved names."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        module, dot, part = name.removeprefix(PREFIX).rpartition(".lora_")
        if not dot or part not in ("A.weight", "B.weight"):
            raise BackboneError(
                f"--backbone-adapter {folder}: tensor {name!r} is not a LoRA A/B weight "
                "(modules_to_save, embedding or bias adapters do not merge here)"
            )
        found.setdefault(module, {})[part[0]] = tensor
    incomplete = sorted(m for m, ab in found.items() if set(ab) != {"A", "B"})
    if incomplete or not found:
        raise BackboneError(
            f"--backbone-adapter {folder}: no complete lora_A/lora_B pair for "
            f"{', '.join(incomplete) or 'any module'}"
        )
    return {m: (ab["A"], ab["B"]) for m, ab in found.items()}


@torch.no_grad()
def _merge_one(
    folder: Path, module: Any, path: str, a: torch.Tensor, b: torch.Tensor, config: dict
) -> None:
    """W += scale * B @ A (transposed for fan_in_fan_out), computed in float32."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise BackboneError(
            f"--backbone-adapter {folder}: the backbone has no weight at {path!r}; "
            "was the adapter trained on another model?"
        )
    r = config["r"]
    alpha = config.get("lora_alpha", r)
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    delta = scale * (b.float() @ a.float())  # (out, in)
    if config.get("fan_in_fan_out"):
        delta = delta.T  # Conv1D stores (in, out)
    if delta.shape != weight.shape:
        raise BackboneError(
            f"--backbone-adapter {folder}: {path} is {tuple(weight.shape)} in the backbone, "
            f"{tuple(delta.shape)} in the adapter; was it trained on another model?"
        )
    weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))


def _digest(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the merge settings and the tensors (name, shape, float32 bytes)."""
    keys = ("r", "lora_alpha", "use_rslora", "fan_in_fan_out")
    hasher = hashlib.sha256(json.dumps({k: config.get(k) for k in keys}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().float().contiguous().cpu()
        hasher.update(f"{name}:{tuple(t.shape)}".encode())
        hasher.update(t.numpy().tobytes())
    return hasher.hexdigest()[:16]
