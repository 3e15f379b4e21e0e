"""4-bit NF4 frozen Linear layers through bitsandbytes (`--quantize nf4`), on CPU and CUDA.

Each of the transformer's Linear layers (not the LM head, see `_precision.linear_filter`)
becomes a `bitsandbytes.nn.Linear4bit` whose weight is quantized right away, layer by
layer, on the device it will run on: the packed 4-bit data (uint8, two values a byte)
and its per-64-value scales (themselves 8-bit, bitsandbytes' default "double
quantization", as QLoRA) replace the float weight, which is freed with the old layer.
A forward dequantizes W to the activations' dtype and runs `F.linear`; the backward
dequantizes again for the input gradient, so no float copy of W is kept for backward.

The embedding table and the LM head stay in `--dtype`: bitsandbytes quantizes Linear
layers only (transformers' own bitsandbytes loading leaves the head out too), and prompt
code reads rows of the table (`inject.head.EmbeddingTable`). int8 quantizes both ends
(`_precision.int8_ends`); under nf4 they are the part of the model that stays float.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from types import ModuleType

import torch

from softprompt.errors import BackboneError

BITSANDBYTES_INSTALL = "pip install bitsandbytes==0.50.2"
NF4_DEVICES = ("cpu", "cuda")
_HUB_KERNEL = "kernels-community/quantization-bitsandbytes"


class _HubKernelNotice(logging.Filter):
    """Drops the one notice bitsandbytes logs when it does not fetch its optional CPU
    kernel from the Hugging Face Hub (`_import_bitsandbytes` stops it from trying), and
    the `kernels` package's own line about the same kernel. Only records naming that
    kernel are dropped; every other bitsandbytes or kernels message still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return (
            _HUB_KERNEL not in message and "gemm_4bit_forward from kernels-community" not in message
        )


for _logger in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_logger).addFilter(_HubKernelNotice())


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_nf4(device: torch.device) -> None:
    """Refuse, with what to do, a device bitsandbytes' 4-bit layers do not run on here, or
    a missing bitsandbytes."""
    if device.type not in NF4_DEVICES:
        raise BackboneError(
            f"--quantize nf4 runs on cpu or cuda (bitsandbytes), not on {device.type}; "
            "use --device cpu or --device cuda, or --quantize int8"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError(
            "--quantize nf4 --device cuda: no CUDA GPU is visible; use --device cpu"
        )
    if not _installed("bitsandbytes"):
        raise BackboneError(
            "--quantize nf4 needs the bitsandbytes package, which is not installed; "
            f"install it with: {BITSANDBYTES_INSTALL}"
        )


def nf4_setup(device: torch.device) -> ModuleType:
    """bitsandbytes, once `device` and the install are checked (`check_nf4`)."""
    check_nf4(device)
    return _import_bitsandbytes()


def _import_bitsandbytes() -> ModuleType:
    """`import bitsandbytes` without its attempt to download and run a CPU kernel from
    the Hugging Face Hub.

    On CPUs with AVX512-BF16, importing bitsandbytes 0.50 calls
    `kernels.get_kernel("kernels-community/quantization-bitsandbytes")`: a network
    request (its second try with no timeout) for code that only serves the bf16
    inference path we switch off (`nf4_linear`). This project reaches no hub; with
    `kernels` unimportable for the length of the import, bitsandbytes takes its own
    fallback at once (and logs the notice `_HubKernelNotice` drops)."""
    held = sys.modules.get("kernels")
    had = "kernels" in sys.modules
    sys.modules["kernels"] = None  # type: ignore[assignment]  # import -> ImportError
    try:
        import bitsandbytes
    finally:
        if had:
            sys.modules["kernels"] = held  # type: ignore[assignment]
        else:
            del sys.modules["kernels"]
    return bitsandbytes


def nf4_linear(bnb: ModuleType, linear: torch.nn.Linear, device: torch.device) -> torch.nn.Module:
    """A frozen NF4 `Linear4bit` with `linear`'s weight quantized on `device` now (the
    caller drops `linear`, and with it the float weight), computing in its dtype.

    bitsandbytes' CPU fast path is turned off: in eval mode with an input that needs no
    gradient (every `predict`, a prefix's first layer in training) it repacks the weight
    in place on AVX512-BF16 CPUs and computes in bf16, whatever `--dtype` says, and its
    op has no backward. Off, every CPU forward is `F.linear` on the dequantized weight in
    the model's dtype: the same numbers in training and scoring, on every CPU."""
    weight = linear.weight.detach()
    swapped = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=weight.dtype,
        quant_type="nf4",
        device="meta",
    )
    swapped.support_avx512bf16_for_cpu = False
    swapped.weight = bnb.nn.Params4bit(
        weight, requires_grad=False, quant_type="nf4", module=swapped
    ).to(device)  # Params4bit quantizes as it is placed
    if linear.bias is not None:
        bias = linear.bias.detach().to(device)
        swapped.bias = torch.nn.Parameter(bias, requires_grad=False)
    return swapped.train(linear.training)


def nf4_linears(model: torch.nn.Module, device: torch.device, keep) -> torch.nn.Module:
    """Swap every Linear `keep(module, name)` selects for its NF4 form, one at a time, so
    each float weight is freed as soon as its layer is quantized, then place the rest
    on `device`. A Linear held under two names is quantized once: the originals were all
    alive together at the start, so their ids tell them apart throughout."""
    bnb = nf4_setup(device)
    targets = [
        (parent_name, child_name)
        for parent_name, parent in model.named_modules()
        for child_name, child in parent.named_children()
        if keep(child, f"{parent_name}.{child_name}") and not isinstance(child, bnb.nn.Linear4bit)
    ]
    done: dict[int, torch.nn.Module] = {}
    for parent_name, child_name in targets:
        parent = model.get_submodule(parent_name)
        original = id(getattr(parent, child_name))
        if original not in done:
            done[original] = nf4_linear(bnb, getattr(parent, child_name), device)
        setattr(parent, child_name, done[original])
    return model.to(device)
