"""Spreading a frozen backbone over devices with Accelerate (`--device-map`).

A backbone larger than one device is loaded with Accelerate's big-model dispatch: each
block goes to a GPU, the CPU or the disk, and hooks move its weights to the execution
device just before the block runs. Prompt code reads two parts of the model directly
(the input embedding table and the LM head, see inject/head.py), not through a module
call, so those two are always held on the main execution device; everything else may be
offloaded. Prompts and inputs go to the device of the input embeddings (`input_device`).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref

import torch

from softprompt.errors import BackboneError

DeviceMap = dict[str, str | int]
OFFLOAD = ("cpu", "disk")


def main_device(device_map: DeviceMap) -> str | int:
    """Where offloaded blocks compute: the first device that is not "cpu" or "disk"
    (Accelerate's rule), else the CPU."""
    return next((d for d in device_map.values() if d not in OFFLOAD), "cpu")


def _module_names(model: torch.nn.Module) -> dict[str, str]:
    """The module names of the input embeddings and the LM head (when there is one)."""
    names = {id(m): n for n, m in model.named_modules()}
    found = {"input embeddings": names.get(id(model.get_input_embeddings()), "")}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        found["LM head"] = names.get(id(head), "")
    return found


def placed_on(device_map: DeviceMap, module: str) -> str | int | None:
    """The device a module lands on: the map entry with the longest prefix of its name."""
    best, device = -1, None
    for key, value in device_map.items():
        if (key == "" or module == key or module.startswith(key + ".")) and len(key) > best:
            best, device = len(key), value
    return device


def plan_device_map(
    empty: torch.nn.Module,
    device_map: str | DeviceMap,
    *,
    dtype: torch.dtype,
    max_memory: dict[str | int, str | int] | None = None,
) -> DeviceMap:
    """An explicit map for `empty` (the model built on the meta device): "auto" asks
    Accelerate (blocks never split; `max_memory` caps each device), a dict is taken as
    given. Either way the input embeddings and LM head must be on the main device."""
    if device_map == "auto":
        from accelerate import infer_auto_device_map

        plan = dict(
            infer_auto_device_map(
                empty,
                max_memory=max_memory,
                no_split_module_classes=list(getattr(empty, "_no_split_modules", None) or []),
                dtype=dtype,
            )
        )
        main = main_device(plan)
        for name in _module_names(empty).values():  # a last head may spill; keep it
            _split_down_to(plan, empty, name)
            plan[name] = main
    elif isinstance(device_map, dict):
        plan = dict(device_map)
    else:
        raise BackboneError(
            f"backbone.device_map: expected 'auto' or a mapping of module names to devices, "
            f"got {device_map!r}"
        )
    _check_ends(empty, plan)
    return plan


def _split_down_to(plan: DeviceMap, model: torch.nn.Module, name: str) -> None:
    """Replace the entry covering module `name` by entries for its parent's children, level
    by level, until `name` has its own entry (so it can be placed apart)."""
    while name not in plan:
        key = max((k for k in plan if k == "" or name.startswith(k + ".")), key=len, default=None)
        if key is None:
            return
        device = plan.pop(key)
        parent = model.get_submodule(key)
        for child, _ in parent.named_children():
            plan[f"{key}.{child}" if key else child] = device
        for attr, _ in [
            *parent.named_parameters(recurse=False),
            *parent.named_buffers(recurse=False),
        ]:
            plan[f"{key}.{attr}" if key else attr] = device


def _check_ends(empty: torch.nn.Module, plan: DeviceMap) -> None:
    main = main_device(plan)
    for what, name in _module_names(empty).items():
        device = placed_on(plan, name)
        if device is None:
            raise BackboneError(f"backbone.device_map: no entry places the {what} ({name!r})")
        if device != main and not (device == "cpu" and main == "cpu"):
            raise BackboneError(
                f"backbone.device_map puts the {what} ({name!r}) on {device!r}: prompt code "
                f"reads it directly, so it must be on the main device {main!r}; "
                f"map {name!r} to {main!r}"
            )


def new_offload_folder() -> str:
    """A private folder for disk-offloaded weights (see `keep_until_freed`)."""
    return tempfile.mkdtemp(prefix="softprompt-offload-")


def keep_until_freed(model: torch.nn.Module, folder: str) -> None:
    """Remove the offload folder when the model is garbage collected."""
    weakref.finalize(model, shutil.rmtree, folder, True)


def is_dispatched(model: torch.nn.Module) -> bool:
    """Whether Accelerate spread the model (then `.to()` must not move it)."""
    return isinstance(getattr(model, "hf_device_map", None), dict)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where token ids and prompts must go: the input embeddings' execution device."""
    embeddings = model.get_input_embeddings()
    hook = getattr(embeddings, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:
        return torch.device(execution if not isinstance(execution, int) else f"cuda:{execution}")
    weight = getattr(embeddings, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device
    return next(model.parameters()).device  # a patch embedding has no single weight


def place(model: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """Move a backbone to `device`, unless Accelerate already placed it (`--device-map`)."""
    return model if is_dispatched(model) else model.to(device)
