"""Process-group plumbing for DDP under `torchrun` or `accelerate launch`.

Both launchers set RANK / WORLD_SIZE / MASTER_ADDR; we read them directly so
the same loop runs single-process or multi-process without code changes.
Only the trainable prompt and head are synced: the backbone is not a
submodule of the wrapped model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class ProcessInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup() -> ProcessInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return ProcessInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return ProcessInfo(rank=dist.get_rank(), world=dist.get_world_size())


def wrap(model: nn.Module, info: ProcessInfo) -> nn.Module:
    if info.world == 1:
        return model
    return nn.parallel.DistributedDataParallel(model)


def all_sum(values: list[float], info: ProcessInfo) -> list[float]:
    if info.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(info: ProcessInfo) -> None:
    if info.world > 1:
        dist.barrier()
