"""Loading a transformers model from a folder, shared by the text and vision loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def from_pretrained(cls: Any, path: str | Path, **kwargs: Any) -> torch.nn.Module:
    """`cls.from_pretrained` with PyTorch's fused attention (sdpa), falling back to the
    eager implementation for architectures that do not offer it."""
    try:
        return cls.from_pretrained(path, attn_implementation="sdpa", **kwargs)
    except ValueError as e:
        if "sdpa" not in str(e).lower():
            raise
        return cls.from_pretrained(path, attn_implementation="eager", **kwargs)


def from_config(cls: Any, config: Any, **kwargs: Any) -> torch.nn.Module:
    """`cls.from_config` with the attention implementation `from_pretrained` picks here."""
    try:
        return cls.from_config(config, attn_implementation="sdpa", **kwargs)
    except ValueError as e:
        if "sdpa" not in str(e).lower():
            raise
        return cls.from_config(config, attn_implementation="eager", **kwargs)
