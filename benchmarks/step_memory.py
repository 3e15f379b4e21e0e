"""Where a training step's memory goes (issue 19): RSS after loading, after each step's
forward and backward, and the bytes autograd saved for the backward (counted once per
storage through saved-tensor hooks), largest shapes first.

    python benchmarks/step_memory.py qwen2.5-coder-1.5b bfloat16 int8 4

Run it twice, the second time with MALLOC_MMAP_THRESHOLD_=131072: what the first run holds
beyond the second is allocator slack (glibc's heap), not tensors. Measured 2026-12-06 on
the 1.5B, int8 + bf16, batch 4, 2 steps: peak RSS growth 3,066 MiB (2,843 MiB with the
fixed threshold) over 2,143 MiB of weights; autograd saved 313 / 497 MiB (rows of 31 /
53 tokens); nothing the size of a weight is saved.
"""

from __future__ import annotations

import collections
import sys

import torch

from softprompt.api import build_model
from softprompt.backbones import load_backbone
from softprompt.data import load_dataset
from softprompt.estimate import module_bytes
from softprompt.tasks.presets import task_defaults

MIB = 2**20


def _mib(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def _step(model, batch, optimizer, start: float) -> None:
    saved: collections.Counter = collections.Counter()
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()  # a quantized subclass counts in module_bytes
        if type(t) in (torch.Tensor, torch.nn.Parameter) and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            saved[(tuple(t.shape), str(t.dtype))] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(batch).loss
    total = sum(saved.values()) / MIB
    print(f"  forward: RSS +{_mib('VmRSS') - start:.0f} MiB, saved {total:.0f} MiB")
    for (shape, dtype), size in saved.most_common(4):
        print(f"    {shape} {dtype}: {size / MIB:.1f} MiB")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"  backward: RSS +{_mib('VmRSS') - start:.0f}, peak +{_mib('VmHWM') - start:.0f}")


def main() -> None:
    name, dtype, quantize, batch_size = sys.argv[1:5]
    torch.manual_seed(0)
    data = load_dataset("movie-sentiment")
    open("/proc/self/clear_refs", "w").write("5")  # peak := now
    start = _mib("VmRSS")
    backbone = load_backbone(name, dtype=dtype, quantize=quantize)
    weights = module_bytes(backbone.model) / MIB
    print(f"loaded: RSS +{_mib('VmRSS') - start:.0f} MiB, weights {weights:.0f} MiB")
    model = build_model(backbone, data, {"name": "soft-prompt", "n_tokens": 20},
                        task_defaults("movie-sentiment"))  # fmt: skip
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=3e-2)
    size = int(batch_size)
    for step in range(2):
        print(f"step {step} (RSS +{_mib('VmRSS') - start:.0f} MiB before it)")
        _step(model, model.collate(data.train[step * size : (step + 1) * size]), optimizer, start)
    print(f"peak RSS growth {_mib('VmHWM') - start:.0f} MiB")


if __name__ == "__main__":
    main()
