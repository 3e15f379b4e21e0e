"""A probe the int8 tests share: how large the biggest float tensor an op made was, so a
test can tell a block-wise path (at most a block) from one that expands a whole weight."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LargestFloatTensor(TorchDispatchMode):
    """Records the most elements any floating-point result of an aten op held."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.largest = max(self.largest, t.numel())
        return out
