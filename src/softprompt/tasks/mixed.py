"""Rows of several tasks in one forward pass.

Each task collates its own rows (its template, label words, visibility masks); `merge`
lays the parts one under the other, right-padded to one width, so the frozen model runs
once over all of them, with each row's own prompt (inject/prompt.py). The hidden
states are then cut back per part and each task scores its own rows. Padding on the
right never moves a token, so every index a part computed for itself stays valid.
"""

from __future__ import annotations

import torch
from torch import nn

from softprompt.errors import ConfigError


def _as_visibility(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A (B, T) padding mask -> (B, T, T) causal visibility and (B, T) positions."""
    mask = batch["attention_mask"]
    if mask.dim() == 3:
        return mask.bool(), batch["positions"]
    length = mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()  # (T, T)
    sees = causal[None] & mask.bool()[:, None, :]  # (B, T, T)
    sees |= torch.eye(length, dtype=torch.bool, device=mask.device)[None]  # pads see themselves
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
    return sees, positions


def _widen(tensor: torch.Tensor, width: int, dims: int, value: int = 0) -> torch.Tensor:
    """Right-pad the last `dims` dimensions of `tensor` to `width`."""
    pad: list[int] = []
    for size in reversed(tensor.shape[-dims:]):
        pad += [0, width - size]
    return torch.nn.functional.pad(tensor, pad, value=value)


def merge(parts: list[dict[str, torch.Tensor]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Several collated batches -> one batch of model inputs (ids, mask, positions)."""
    if len(parts) == 1:
        keys = ("input_ids", "attention_mask", "positions", "inline_index")
        return {k: parts[0][k] for k in keys if k in parts[0]}
    width = max(p["input_ids"].shape[1] for p in parts)
    ids = torch.cat([_widen(p["input_ids"], width, 1, pad_id) for p in parts])  # (B, W)
    merged = {"input_ids": ids}
    if any("inline_index" in p for p in parts):  # template slots: -1 where there are none
        slots = [p.get("inline_index", torch.full_like(p["input_ids"], -1)) for p in parts]
        merged["inline_index"] = torch.cat([_widen(s, width, 1, -1) for s in slots])  # (B, W)
    if all(p["attention_mask"].dim() == 2 for p in parts):
        mask = torch.cat([_widen(p["attention_mask"], width, 1) for p in parts])  # (B, W)
        return {**merged, "attention_mask": mask}
    sees, positions = [], []
    for part in parts:
        part_sees, part_positions = _as_visibility(part)
        extra = width - part_sees.shape[1]
        grown = _widen(part_sees, width, 2)  # (b, W, W)
        if extra:
            grown[:, -extra:, -extra:] |= torch.eye(extra, dtype=torch.bool, device=grown.device)
        sees.append(grown)
        positions.append(_widen(part_positions, width, 1))
    return {**merged, "attention_mask": torch.cat(sees), "positions": torch.cat(positions)}


# what nn.ModuleDict itself holds (train, eval, keys, to, ...): no module key may be one
_MODULE_DICT_NAMES = frozenset(dir(nn.ModuleDict()))


class TaskModules(nn.ModuleDict):
    """Task name -> model, for any task name. A task named after an attribute of the dict
    (a user's `train.csv` makes a task "train") would make `nn.ModuleDict` raise
    KeyError, so it is held under "task-<name>"; every other name is its own key, so
    checkpoint keys (`models.<name>.`) are those of runs made before this class."""

    def __init__(self, models: dict[str, nn.Module]) -> None:
        super().__init__()
        self._keys: dict[str, str] = {}
        for name, model in models.items():
            self[name] = model

    def __setitem__(self, name: str, module: nn.Module) -> None:
        key = f"task-{name}" if name in _MODULE_DICT_NAMES else name
        if key in self._modules and self._keys.get(name) != key:
            raise ConfigError(f"tasks: the task names {name!r} and {key!r} cannot be used together")
        self._keys[name] = key
        self.add_module(key, module)

    def __getitem__(self, name: str) -> nn.Module:  # type: ignore[override]
        return self._modules[self._keys[name]]

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self):  # type: ignore[override]
        return self._keys.keys()

    def items(self):  # type: ignore[override]
        return [(name, self._modules[key]) for name, key in self._keys.items()]

    def values(self):  # type: ignore[override]
        return [self._modules[key] for key in self._keys.values()]
