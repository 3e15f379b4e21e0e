"""How the frozen weights are held: their dtype (`--dtype`) and quantization (`--quantize`).

Prompt learning trains a few thousand float32 parameters against a frozen model of
millions to billions; the frozen weights dominate memory, so holding them in bf16
(2 bytes a parameter) or int8 (about 1) is what lets a larger backbone fit. Only the
backbone is reduced: prompt parameters and optimizer state stay float32, and
`softprompt.inject` casts at the boundary into the backbone and back out.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable

import torch

from softprompt.backbones._core import DTYPE_CHOICES, DTYPES, QUANTIZATIONS
from softprompt.backbones._frozen_int8 import FrozenQuantizedLinear, frozen_embedding_class
from softprompt.backbones._nf4 import nf4_linear, nf4_linears, nf4_setup
from softprompt.backbones._stream import fix_mmap_threshold
from softprompt.errors import BackboneError, ConfigError

# Once torchao is installed, transformers imports it whenever it builds a model, and its
# import logs warnings about CUDA-only kernels it cannot load on a CPU machine (torch adds
# pytree deprecations). Nothing a user can act on: keep them out of every run's output.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

TORCHAO_INSTALL = "pip install torchao"


def resolve_dtype(name: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """`backbone.dtype` -> a torch dtype; ``auto`` picks per device.

    ``auto`` is float32 on CPU: the built-in backbones are small (SmolLM2-135M is 0.5 GB in
    float32), and float32 keeps scores identical to the runs and prompt files made before
    dtypes existed. bf16 is worth asking for on a large backbone: on SmolLM2 here it took
    0.56x the training peak and ran steps about 2x faster (benchmarks/dtype_memory.py, one
    noisy round), but its effect on accuracy after training is not measured yet, so it
    is not the default. On CUDA ``auto`` is bfloat16 (float16 where the GPU lacks bf16):
    what GPU users expect and what PEFT users load large models in, half the memory and
    tensor-core speed, with bf16's float32 exponent range.
    """
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ConfigError(f"backbone.dtype: {name} is not one of {', '.join(DTYPE_CHOICES)}")
        return name
    if name not in DTYPE_CHOICES:
        raise ConfigError(
            f"backbone.dtype: must be one of {', '.join(DTYPE_CHOICES)}, got {name!r}"
        )
    if name != "auto":
        return DTYPES[name]
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def check_quantize(quantize: str | None) -> str | None:
    """`backbone.quantize`: None / "none", "int8" or "nf4"; anything else is named."""
    if quantize in (None, "none"):
        return None
    if quantize not in QUANTIZATIONS:
        raise ConfigError(
            f"backbone.quantize: must be one of none, {', '.join(QUANTIZATIONS)}, got {quantize!r}"
        )
    return quantize


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def linear_filter(model: torch.nn.Module):
    """The transformer's Linear layers, not the LM head: under int8 the head is quantized
    with the embedding table it may be tied to (`int8_ends`), under NF4 it stays in the
    model's dtype (prompt code reads rows of it)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    def keep(module: torch.nn.Module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and module is not head

    return keep


def quantize_model(model: torch.nn.Module, how: str, device: torch.device) -> torch.nn.Module:
    """Reduce the frozen Linear weights in place: int8 weight-only (torchao) or NF4
    (bitsandbytes, CPU or CUDA). Call after fingerprinting: the fingerprint names the
    source."""
    if how == "int8":
        return _int8(model)
    if how == "nf4":
        return _nf4(model, device)
    raise ConfigError(f"backbone.quantize: unknown quantization {how!r}")


def hold_mmap_threshold() -> None:
    """Fix glibc's mmap threshold at its 128 KiB default for this process, before an int8
    load frees anything (`fix_mmap_threshold`).

    Left dynamic, it rose with the load's and the steps' freed blocks, and each of the
    first training steps on the 1.5B in int8 + bf16 left ~0.4 GB more resident: 1,833 ->
    2,293 -> 2,712 MiB over the process's start, against 1,833 -> 1,889 -> 1,898 MiB with
    the threshold fixed before the load (runs/probe.py-style runs, one each; fixed after
    the load, the steps still grew). bf16 without int8 keeps its weights file-mapped and
    frees no blocks while loading. Every tensor above 128 KiB is then mapped and unmapped
    on its own; no slower step was measured (noisy, shared machine)."""
    fix_mmap_threshold()


def check_int8() -> None:
    """Refuse with the install command when torchao is missing."""
    if not _installed("torchao"):
        raise BackboneError(
            f"--quantize int8 needs the torchao package, which is not installed; "
            f"install it with: {TORCHAO_INSTALL}"
        )


def _int8(model: torch.nn.Module) -> torch.nn.Module:
    check_int8()
    hold_mmap_threshold()
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    keep = linear_filter(model)
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=keep)
    for name, module in model.named_modules():
        if type(module) is torch.nn.Linear and keep(module, name):
            module.__class__ = FrozenQuantizedLinear  # same state, a lighter backward
    int8_ends(model)
    return model


QUANTIZE_CHUNK = 1 << 16  # weight values quantized at a time on load (256 KB of float32)


def int8_linear(parent: torch.nn.Module, child: str, qdata: torch.Tensor | None = None) -> None:
    """Quantize one filled Linear, `parent.<child>`, in place into what `_int8` makes of it
    (torchao's per-row int8 weight, `FrozenQuantizedLinear`): for quantize-on-load.
    `qdata`: where to put the int8 values (a slice of one block reserved for all layers,
    so the long-lived data is not scattered between short-lived temporaries)."""
    target = parent.get_submodule(child)
    quantized = int8_weight(target.weight.detach(), qdata)
    target.weight = torch.nn.Parameter(quantized, requires_grad=False)
    target.__class__ = FrozenQuantizedLinear


def int8_weight(weight: torch.Tensor, qdata: torch.Tensor | None = None) -> torch.Tensor:
    """(out, in) float -> torchao's Int8Tensor with one scale per row (what
    `Int8WeightOnlyConfig` makes), into `qdata` when given.

    Rows are quantized a block at a time into preallocated int8 data and scales (per-row
    scales make the blocks independent): `Int8Tensor.from_hp` on a whole weight allocates
    temporaries several times its size, and over hundreds of layers those freed blocks
    fragment the heap, so the resident memory grew to the float32 model's size anyway."""
    rows = max(1, QUANTIZE_CHUNK // max(1, weight.shape[1]))
    blocks = (weight[start : start + rows] for start in range(0, weight.shape[0], rows))
    return int8_from_blocks(weight.shape, weight.dtype, blocks, qdata, weight.device)


def int8_from_blocks(
    shape: tuple[int, int] | torch.Size,
    dtype: torch.dtype,
    blocks: Iterable[torch.Tensor],
    qdata: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """`int8_weight` of the (out, in) weight whose rows `blocks` yield in order (any
    number of rows each, in `dtype`), so a weight read from a file a block of rows at a
    time is never held whole in float (the embedding table and LM head, on load)."""
    from torchao.quantization import Int8Tensor
    from torchao.quantization.quant_primitives import (
        MappingType,
        choose_qparams_affine,
        quantize_affine,
    )

    out_features, in_features = shape
    if qdata is None:
        qdata = torch.empty(out_features, in_features, dtype=torch.int8, device=device)
    qdata = qdata.view(out_features, in_features)
    scale = torch.empty(out_features, 1, dtype=torch.float32, device=device)
    zero_point = torch.empty(out_features, 1, dtype=torch.int8, device=device)
    block_size = [1, in_features]  # per row, as Int8WeightOnlyConfig's PerRow()
    bounds = {"quant_min": -128, "quant_max": 127}
    start = 0
    for block in blocks:
        # Int8Tensor.from_hp's own steps, on plain tensors (a subclass per block would be
        # cyclic garbage, its data kept until the collector runs)
        s, z = choose_qparams_affine(
            input=block,
            mapping_type=MappingType.SYMMETRIC,
            block_size=block_size,
            target_dtype=torch.int8,
            scale_dtype=torch.float32,
            zero_point_dtype=torch.int8,
            keepdim=True,
            eps=torch.finfo(torch.float32).eps,
            **bounds,
        )
        stop = start + block.shape[0]
        qdata[start:stop] = quantize_affine(
            block, block_size=block_size, scale=s, zero_point=z, output_dtype=torch.int8, **bounds
        )
        scale[start:stop] = s
        zero_point[start:stop] = z
        start = stop
    if start != out_features:
        raise BackboneError(
            f"int8: {start} rows quantized of a ({out_features}, {in_features}) weight"
        )
    return Int8Tensor(qdata, scale, block_size, dtype, zero_point=zero_point)


def int8_ends(model: torch.nn.Module) -> None:
    """Quantize the input embedding table and the LM head in place (one int8 copy where
    they are tied), after the Linear layers: on the 1.5B they are 0.9 GB of its 2.1 GB
    int8 + bf16 weights. Per-row int8 is per-token for both, so the table's lookups
    expand only the rows asked for (`FrozenInt8Embedding`) and the head runs through
    `FrozenQuantizedLinear` a block of rows at a time. Every module holding the same
    weight (tied heads, T5's shared table) is pointed at the one int8 copy."""
    ends = [model.get_input_embeddings()]
    if hasattr(model, "get_output_embeddings"):
        ends.append(model.get_output_embeddings())
    done: set[int] = set()
    for end in ends:
        weight = getattr(end, "weight", None)
        if not isinstance(end, (torch.nn.Embedding, torch.nn.Linear)) or id(weight) in done:
            continue
        if hasattr(weight, "qdata"):  # quantized as it loaded (backbones/_stream.py)
            quantized = weight
        elif type(weight).__name__ != "Parameter" or weight.is_meta:  # another scheme
            continue
        else:
            quantized = torch.nn.Parameter(int8_weight(weight.detach()), requires_grad=False)
        done.add(id(quantized))
        for module in model.modules():
            if module._parameters.get("weight") is weight:
                module._parameters["weight"] = quantized
                _to_frozen_int8(module)
        del weight


def _to_frozen_int8(module: torch.nn.Module) -> None:
    if isinstance(module, torch.nn.Embedding):
        module.__class__ = frozen_embedding_class(type(module))
    elif type(module) is torch.nn.Linear:
        module.__class__ = FrozenQuantizedLinear
    elif not isinstance(module, FrozenQuantizedLinear):
        raise BackboneError(
            f"--quantize int8: cannot hold a {type(module).__name__} that shares the "
            "embedding table in int8; use --quantize none for this backbone"
        )


def _nf4(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Each transformer Linear -> bitsandbytes' NF4 Linear4bit, quantized on `device`
    (cpu or cuda) as it is swapped in (backbones/_nf4.py)."""
    return nf4_linears(model, device, linear_filter(model))


def nf4_quantizer(device: torch.device):
    """`quantize_one` for the streamed load (`_stream.load_quantized`): the filled Linear
    `parent.<child>` becomes its NF4 form on `device` (no int8 block is reserved)."""
    bnb = nf4_setup(device)

    def quantize_one(parent: torch.nn.Module, child: str, qdata: torch.Tensor | None) -> None:
        setattr(parent, child, nf4_linear(bnb, parent.get_submodule(child), device))

    return quantize_one
