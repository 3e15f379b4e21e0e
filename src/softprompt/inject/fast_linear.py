"""The frozen model's linear layers on prepacked oneDNN weights, for serving on a CPU.

On this project's CPUs a served decoder spends 80-90% of its time in the frozen model's
matrix products (a torch profile of 16 mixed generation requests on SmolLM2: 76% in
`aten::mm`, then 7% attention, 6% cache concatenation, ~1% Python per row). torch's
`F.linear` runs them through MKL; the same product on oneDNN with the weight reordered
once into its blocked layout (`torch.ops.mkldnn`, what inductor uses on CPUs with frozen
weights, and what vLLM-CPU's own linear layers do) ran 1.24x faster on the AMD EPYC
here at 16 to 256 rows (20.9 against 16.8 GFLOPS at a decoding step's 16 rows;
`benchmarks/decode_profile.py`).

It is also row-exact where MKL is not: oneDNN gives each row the bits it gets alone (a
(1, 576) x (576, 1536) product equals row 0 of the (600, 576) one), where MKL's rows
differ by up to 4e-5 between 1-3 rows and more. Its results differ from MKL's by about
1e-4, so a batch uses one or the other throughout: `packed()` turns it on for the
calling thread (the serving engine's model thread, per engine call), and everything
else (training, `predict`, gradients) runs the model as before.

The packed copy costs the weights' bytes again, so a model is packed only when its
linear weights fit `MAX_PACKED_BYTES`; float32 weights on the CPU only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

MAX_PACKED_BYTES = 2 << 30  # a second copy of at most 2 GiB of weights (0.5B in float32)

_state = threading.local()
_packed: WeakIdKeyDictionary = WeakIdKeyDictionary()  # weight -> (its version, packed)
_lock = threading.Lock()


def available() -> bool:
    """Whether this torch build has the oneDNN linear ops."""
    return torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_reorder_linear_weight"
    )


def _eligible(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        type(module) is torch.nn.Linear  # not a quantized or otherwise wrapped layer
        and weight is not None
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
    )


def install(model: torch.nn.Module) -> bool:
    """Route `model`'s float32 CPU linear layers through `linear` (which is `F.linear`,
    as before, unless `packed()` is on in the calling thread). False, changing nothing,
    where packing is not available or the weights would not fit `MAX_PACKED_BYTES`."""
    if not available():
        return False
    layers = [m for m in model.modules() if _eligible(m)]
    if sum(m.weight.numel() * m.weight.element_size() for m in layers) > MAX_PACKED_BYTES:
        return False
    for module in layers:
        if not getattr(module, "_softprompt_packed", False):
            module.forward = partial(_forward, module)
            module._softprompt_packed = True
    return True


def _forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, module.weight, module.bias)


@contextmanager
def packed() -> Iterator[None]:
    """Packed weights for the installed layers (and `linear` callers) in this thread."""
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, on the packed weight inside `packed()` when no
    gradient is wanted and everything is float32 on the CPU: (..., in) -> (..., out)."""
    if (
        getattr(_state, "depth", 0) == 0
        or torch.is_grad_enabled()
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or x.device.type != "cpu"
        or weight.device.type != "cpu"
        or not available()
    ):
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(
        x.contiguous(), _pack(weight), bias, "none", [], ""
    )  # (..., out)


def _pack(weight: torch.Tensor) -> torch.Tensor:
    """The weight in oneDNN's layout, reordered once (again if the weight was written)."""
    with _lock:
        found = _packed.get(weight)
        if found is not None and found[0] == weight._version:
            return found[1]
        reordered = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        _packed[weight] = (weight._version, reordered)
        return reordered
