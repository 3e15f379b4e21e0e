"""Process-group plumbing for DDP (and FSDP of the frozen backbone) under `torchrun` or
`accelerate launch`.

Both launchers set RANK / WORLD_SIZE / MASTER_ADDR; we read them directly so
the same loop runs single-process or multi-process without code changes.
Only the trainable prompt and head are synced: the backbone is not a
submodule of the wrapped model.

With `train.fsdp` the frozen backbone's repeated blocks are also sharded over the
processes with PyTorch's FSDP2 (`fully_shard`): each process keeps 1/world of every
block's weights and gathers a block just before it runs. Embeddings, final norm and LM
head stay whole on every process (prompt code reads embedding rows directly). A block
is *not* freed again after its backward pass: a causal prompt's keys/values are
computed in a separate call of each block and reach the rows through the attention
cache, so the prompt's backward through a block comes after the rows' backward has
finished with it; FSDP would have freed the weights it needs. `reshard` frees them all
once the step's backward is done, so the full weights are held only from the end of
the backward pass to the optimizer step (and never in evaluation, which has no backward).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

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


def shard_frozen(
    stack: nn.Module, blocks: list[nn.Module], info: ProcessInfo, device: torch.device
) -> list[nn.Module]:
    """FSDP2 over each frozen block of `stack` (`fully_shard`, one mesh of all processes).

    `stack` (the module the prompt code calls) becomes FSDP's root, holding no weights of
    its own (its embeddings and norms stay plain tensors): only a non-root block is freed
    after its forward pass. Returns the sharded blocks (none with one process: there is
    nothing to shard over). Call after the backbone is on `device`; call `reshard` after
    each backward pass."""
    if info.world == 1:
        return []
    mesh = init_device_mesh(device.type, (info.world,))
    for block in blocks:
        if not isinstance(block, FSDPModule):  # a second run on the same backbone
            fully_shard(block, mesh=mesh)
        block.set_reshard_after_backward(False)  # see the module docstring
    if not isinstance(stack, FSDPModule):
        in_blocks = {id(p) for block in blocks for p in block.parameters()}  # sharded ones
        kept = {p for p in stack.parameters() if id(p) not in in_blocks}
        fully_shard(stack, mesh=mesh, ignored_params=kept)
    return blocks


def reshard(blocks: list[nn.Module]) -> None:
    """Free the gathered weights of sharded blocks (each process keeps its own shard)."""
    for block in blocks:
        block.reshard()


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
