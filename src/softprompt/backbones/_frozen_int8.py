"""The frozen int8 Linear: y = x W^T + b with W held as torchao's per-row int8, computed
a block of W at a time, differentiable in x only (the backbone is frozen).

torchao's weight-only int8 linear casts the whole W to the activations' dtype for each
matmul, and its `dequantize` makes three more full copies on the way (int8 -> float,
minus the zero point, times the float32 scale). Autograd no longer keeps any of them
(the backward rebuilds W), but on the 1.5B each training step still allocated and freed
those 27-55 MB copies for every Linear, forwards and backwards. glibc then serves the
step's activations between them from a heap it cannot give back: training on int8 added
1.9-2.3 GB over the int8 weights against 0.4 GB over bf16 (docs/scaling.md). With
`MALLOC_MMAP_THRESHOLD_=65536` the same step added half as much on the 0.5B, so the
memory went to those transients, not to saved tensors. Here no temporary is larger
than `CHUNK` weight values: the forward fills the output's columns a block of W's rows
at a time, the backward fills the input gradient's columns a block of W's columns at a
time, each with the same arithmetic as torchao's (so the outputs match it exactly).
Nothing but the module is kept for backward: the int8 data and scales are already held.

The two ends of the model are per-row int8 too (`_precision.int8_ends`): the LM head is
this Linear (a row per token), and the input embedding table, the same rows, is read by
`FrozenInt8Embedding` and `dequantized_rows`, which expand only the rows looked up (torchao's
embedding op dequantizes the whole table per lookup), and by `dequantized_blocks` for
products with the whole table (nearest tokens, HotFlip gradients over the vocabulary).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F

CHUNK = 1 << 20  # weight values dequantized at a time (4 MB as float32)


def _per_row_int8(weight: torch.Tensor) -> bool:
    """torchao's Int8Tensor with one scale per output row (what `--quantize int8` makes)."""
    block = getattr(weight, "block_size", None)
    return (
        hasattr(weight, "qdata")
        and weight.qdata.dtype == torch.int8
        and block is not None
        and list(block) == [1, weight.shape[-1]]
        and getattr(weight, "act_quant_kwargs", None) is None
        and getattr(weight, "act_pre_scale", None) is None
    )


_SCRATCH = threading.local()  # per thread: {(dtype, device): a flat buffer}


def _scratch(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reused buffer for one dequantized block of W (at most `CHUNK` values): the blocks
    were fresh tensors, one per block forwards and four per block backwards (cast, minus
    the zero point, times the scale, cast back), each allocated and freed again for
    every Linear in every step. Filled in place, the values are the same: the scales'
    float32 product is rounded once to the block's dtype, as torchao rounds it."""
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = {}
    held = buffers.get((dtype, device))
    if held is None or held.numel() < numel:
        held = buffers[(dtype, device)] = torch.empty(max(numel, CHUNK), dtype=dtype, device=device)
    return held[:numel]


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """torchao's per-row weight-only int8 linear (`mm(x, q^T.to(dtype)) * scale + bias`),
    one block of output columns at a time."""
    qdata, dtype = weight.qdata, x.dtype  # (out, in) int8
    out_features, in_features = qdata.shape
    flat = x.reshape(-1, in_features)  # (N, in)
    y = torch.empty(flat.shape[0], out_features, dtype=dtype, device=x.device)  # (N, out)
    scale = weight.scale.reshape(-1)  # (out,)
    rows = max(1, CHUNK // max(1, in_features))
    for start in range(0, out_features, rows):
        stop = min(out_features, start + rows)
        block = y[:, start:stop]  # (N, rows)
        dense = _scratch((stop - start) * in_features, dtype, x.device)
        dense = dense.view(stop - start, in_features).copy_(qdata[start:stop])  # (rows, in)
        torch.mm(flat, dense.t(), out=block)
        block.mul_(scale[start:stop].to(dtype))
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], out_features)


def _input_grad(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad @ W, W dequantized as torchao's `dequantize(grad.dtype)` does, one block of
    W's columns (so of the result's columns) at a time."""
    qdata, dtype = weight.qdata, grad.dtype  # (out, in) int8
    out_features, in_features = qdata.shape
    flat = grad.reshape(-1, out_features)  # (N, out)
    result = torch.empty(flat.shape[0], in_features, dtype=dtype, device=grad.device)
    scale = weight.scale.reshape(-1, 1)  # (out, 1)
    zero = None if weight.zero_point is None else weight.zero_point.reshape(-1, 1).to(dtype)
    cols = max(1, CHUNK // max(1, out_features))
    for start in range(0, in_features, cols):
        stop = min(in_features, start + cols)
        dense = _scratch(out_features * (stop - start), dtype, grad.device)
        dense = dense.view(out_features, stop - start).copy_(qdata[:, start:stop])  # (out, cols)
        if zero is not None:
            dense.sub_(zero)
        dense.mul_(scale)  # in float32 (the scales'), rounded once to dtype: as torchao
        torch.mm(flat, dense, out=result[:, start:stop])
    return result.reshape(*grad.shape[:-1], in_features)


class _FrozenInt8Function(torch.autograd.Function):
    """y = x W^T + b for a frozen int8 W; the backward gives x's gradient only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: torch.nn.Linear) -> torch.Tensor:
        ctx.module = module  # the int8 data and scales live in it already: nothing saved
        return _forward(x, module.weight, module.bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _input_grad(grad, ctx.module.weight), None  # (..., in)


class _FrozenDenseFunction(torch.autograd.Function):
    """The same for any other quantized W (dequantized whole in the backward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: torch.nn.Linear) -> torch.Tensor:
        ctx.module = module
        return F.linear(x, module.weight, module.bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight = ctx.module.weight
        dense = weight.dequantize(grad.dtype) if hasattr(weight, "dequantize") else weight
        return grad @ dense.to(grad.dtype), None  # (..., in)


class FrozenQuantizedLinear(torch.nn.Linear):
    """A Linear whose quantized weight is frozen: no float copy of W is kept for the
    backward, and a per-row int8 W is never expanded whole (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _per_row_int8(self.weight):
            if torch.is_grad_enabled() and x.requires_grad:
                return _FrozenInt8Function.apply(x, self)
            return _forward(x, self.weight, self.bias)
        if torch.is_grad_enabled() and x.requires_grad:
            return _FrozenDenseFunction.apply(x, self)
        return F.linear(x, self.weight, self.bias)


def dequantized_rows(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """`weight[ids]` in the weight's dtype: (..., d) for ids (...). A per-row int8 table
    gives exactly `weight.dequantize()[ids]` (torchao's arithmetic) with only those rows
    expanded: torchao's own embedding lookup dequantizes the whole table (0.9 GB in
    float32 for the 1.5B's vocabulary) for every lookup."""
    if not _per_row_int8(weight):
        return weight[ids]
    dtype = weight.dtype
    rows = weight.qdata[ids].to(dtype)  # (..., d)
    if weight.zero_point is not None:
        rows = rows - weight.zero_point[ids].to(dtype)  # (out, 1)[ids]: (..., 1)
    return (rows * weight.scale[ids]).to(dtype)  # float32 scales, as torchao dequantizes


def dequantized_blocks(weight: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, rows start:start+n of W in its dtype), at most `CHUNK` values a block, so a
    product with the whole table never holds a float copy of it."""
    vocab, width = weight.shape
    rows = max(1, CHUNK // max(1, width))
    for start in range(0, vocab, rows):
        ids = torch.arange(start, min(vocab, start + rows), device=weight.device)
        yield start, dequantized_rows(weight, ids)  # (n, d)


class FrozenInt8Embedding(torch.nn.Embedding):
    """An Embedding whose table is per-row int8: a lookup expands only the looked-up rows.
    Frozen, so `padding_idx` (which only masks gradients) and `max_norm` do not apply."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return dequantized_rows(self.weight, ids)  # (..., d)


def frozen_embedding_class(cls: type) -> type:
    """The int8 lookup under `cls`'s own forward: Gemma's scaled embedding still multiplies
    by sqrt(d) after its `super().forward`, which now lands on `FrozenInt8Embedding`."""
    if cls is torch.nn.Embedding or issubclass(cls, FrozenInt8Embedding):
        return FrozenInt8Embedding if cls is torch.nn.Embedding else cls
    made = _EMBEDDING_CLASSES.get(cls)
    if made is None:
        made = _EMBEDDING_CLASSES[cls] = type(f"Int8{cls.__name__}", (cls, FrozenInt8Embedding), {})
    return made


_EMBEDDING_CLASSES: dict[type, type] = {}
