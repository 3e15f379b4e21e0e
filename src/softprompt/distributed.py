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

from softprompt.device import process_backend


@dataclass(frozen=True)
class ProcessInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device | None = None) -> ProcessInfo:
    """Join the launcher's process group: NCCL between GPUs, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return ProcessInfo()
    device = device or torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend=process_backend(device))
    return ProcessInfo(rank=dist.get_rank(), world=dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """Under a launcher each process takes the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def wrap(model: nn.Module, info: ProcessInfo) -> nn.Module:
    """DDP over the trainable part only. A mixed-task step may give a process no row of
    some task, so unused parameters are expected (their gradient is zero there)."""
    if info.world == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)


def all_sum(values: list[float], info: ProcessInfo) -> list[float]:
    if info.world == 1:
        return values
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(info: ProcessInfo) -> None:
    if info.world > 1:
        dist.barrier()
