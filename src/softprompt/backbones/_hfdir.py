"""Loading an HF model folder (config, safetensors, tokenizer) as a frozen backbone, in
the chosen dtype, quantized or spread over devices, with the fingerprint of its source
weights (hashed as float32 before any cast or quantization)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softprompt.backbones._core import (
    Backbone,
    dtype_name,
    fingerprint,
    infer_kind_from_config,
    make_backbone,
)
from softprompt.backbones._fpcache import _cached_fingerprint, store_fingerprint, stored_fingerprint
from softprompt.backbones._hf import from_pretrained as _from_pretrained
from softprompt.backbones._placement import (
    DeviceMap,
    keep_until_freed,
    new_offload_folder,
    plan_device_map,
)
from softprompt.backbones._precision import (
    check_int8,
    hold_mmap_threshold,
    int8_ends,
    int8_from_blocks,
    int8_linear,
    linear_filter,
    nf4_quantizer,
    quantize_model,
)
from softprompt.backbones._stream import load_quantized
from softprompt.errors import BackboneError

_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _stored_dtypes(folder: Path) -> set[torch.dtype | str]:
    """The floating dtypes of a folder's safetensors weights, read from the file headers
    (no tensor data); {"unknown"} where there are none (.bin files) or a header is odd."""
    found: set[torch.dtype | str] = set()
    files = sorted(folder.glob("*.safetensors"))
    for f in files:
        try:
            with f.open("rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(size))
        except (OSError, ValueError):
            return {"unknown"}
        for key, entry in header.items():
            if key != "__metadata__" and isinstance(entry, dict):
                raw = entry.get("dtype")
                if raw in _SAFETENSORS_DTYPES:
                    found.add(_SAFETENSORS_DTYPES[raw])
                elif raw in ("F64", "F8_E4M3", "F8_E5M2"):
                    found.add("unknown")
    return found if files else {"unknown"}


def _lossless(folder: Path, dtype: torch.dtype) -> bool:
    """Whether loading the folder straight into `dtype` keeps every weight exactly, so
    the loaded model's fingerprint is the source's (float32 holds bf16 and fp16 exactly)."""
    return dtype == torch.float32 or _stored_dtypes(folder) <= {dtype}


def _load_weights(
    cls: Any,
    path: Path,
    config: Any,
    dtype: torch.dtype,
    known: str | None,
    cache_kind: str | None,
    placement: Placement | None = None,
) -> tuple[torch.nn.Module, str]:
    """The model held in `dtype` and the fingerprint of its source weights.

    Loaded straight into `dtype` when the fingerprint is known or that load is exact;
    otherwise (float32 weights asked for in bf16) loaded in float32, hashed, then cast
    parameter by parameter. `cache_kind`: store the hash in the folder under that kind.
    `placement`: spread over devices by Accelerate (backbones/_placement.py)."""
    direct = known is not None or _lossless(path, dtype)
    if placement is not None:
        return _load_dispatched(cls, path, config, dtype, known, cache_kind, placement)
    model = _from_pretrained(
        cls, path, config=config, dtype=dtype if direct else torch.float32, local_files_only=True
    )
    if known is None:
        known = _cached_fingerprint(path, model, cache_kind) if cache_kind else fingerprint(model)
    if not direct:
        model.to(dtype)
    return model, known


@dataclass(frozen=True)
class Placement:
    """`--device-map`: "auto" or an explicit map, and Accelerate's per-device caps."""

    device_map: str | DeviceMap
    max_memory: dict[str | int, str | int] | None = None


def _load_dispatched(
    cls: Any,
    path: Path,
    config: Any,
    dtype: torch.dtype,
    known: str | None,
    cache_kind: str | None,
    placement: Placement,
) -> tuple[torch.nn.Module, str]:
    """Load straight into `dtype`, spread by Accelerate: offloaded weights cannot be cast
    after loading, so a float32 folder asked for in bf16 (whose source fingerprint would
    need the float32 weights) is refused with the fix."""
    if known is None and not _lossless(path, dtype):
        raise BackboneError(
            f"{path}: --device-map loads the weights straight into {dtype_name(dtype)}, but "
            "they are stored in another dtype, so their source fingerprint cannot be taken; "
            "load it once without --device-map and save it in that dtype, or use "
            "--dtype float32"
        )
    from accelerate import init_empty_weights

    with init_empty_weights():
        empty = cls.from_config(config, dtype=dtype)
    plan = plan_device_map(
        empty, placement.device_map, dtype=dtype, max_memory=placement.max_memory
    )
    del empty
    folder = new_offload_folder() if "disk" in plan.values() else None
    model = _from_pretrained(
        cls,
        path,
        config=config,
        dtype=dtype,
        device_map=plan,
        offload_folder=folder,
        local_files_only=True,
    )
    if folder is not None:
        keep_until_freed(model, folder)
    if not isinstance(getattr(model, "hf_device_map", None), dict):
        model.hf_device_map = plan  # transformers records only multi-device maps
    if known is None:
        known = _cached_fingerprint(path, model, cache_kind) if cache_kind else fingerprint(model)
    return model, known


def _load_held(
    cls: Any,
    path: Path,
    config: Any,
    dtype: torch.dtype,
    known: str | None,
    cache_kind: str | None,
    placement: Placement | None,
    quantize: str | None,
    device: torch.device | None,
) -> tuple[torch.nn.Module, str]:
    """The model as it will be held (dtype, quantization, placement) and its source
    fingerprint. int8 and nf4 are quantized while the weights load (backbones/_stream.py)
    where the folder allows; otherwise the whole model loads first and is quantized after
    (from_pretrained's memory-mapped file then stays resident: nf4 held more than the
    float32 model on a 48 MB llama, 56 against 48 MB)."""
    if quantize:  # int8 and nf4 free each float weight as its layer is quantized
        hold_mmap_threshold()  # before the load frees its first block
    if quantize and placement is None:
        streamed = _load_streamed(cls, path, config, dtype, known, cache_kind, quantize, device)
        if streamed is not None:
            return streamed
    model, fp = _load_weights(cls, path, config, dtype, known, cache_kind, placement)
    if quantize:
        quantize_model(model, quantize, device or torch.device("cpu"))
    return model, fp


def _load_streamed(
    cls: Any,
    path: Path,
    config: Any,
    dtype: torch.dtype,
    known: str | None,
    cache_kind: str | None,
    quantize: str,
    device: torch.device | None,
) -> tuple[torch.nn.Module, str] | None:
    """Quantize-on-load (None where the folder needs `from_pretrained`); the source
    fingerprint is the known one, the folder's stored one, or hashed while reading.
    int8 reduces the ends too (`int8_ends`); nf4 leaves them in `dtype`."""
    device = device or torch.device("cpu")
    if quantize == "int8":
        check_int8()
        how = {"quantize_one": int8_linear, "quantize_rows": int8_from_blocks}
    else:
        how = {"quantize_one": nf4_quantizer(device), "reserve_int8": False}
    if known is None and cache_kind is not None:
        known = stored_fingerprint(path, cache_kind)
    loaded = load_quantized(
        cls, path, config, dtype, hash_source=known is None, keep=linear_filter, **how
    )
    if loaded is None:
        return None
    model, hashed = loaded
    if quantize == "int8":
        int8_ends(model)  # the ends' modules take the int8 forms of their read-in weights
    else:
        model.to(device)
    if known is None:
        known = hashed
        if cache_kind is not None:
            store_fingerprint(path, cache_kind, known)
    return model, known


def _load_hf_dir(
    path: Path,
    *,
    name: str,
    kind: str | None,
    dtype: torch.dtype,
    fingerprint_cache: bool = False,
    quantize: str | None = None,
    device: torch.device | None = None,
    known_fingerprint: str | None = None,
    placement: Placement | None = None,
) -> Backbone:
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
    )

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise BackboneError(f"cannot read the model config in {path}: {e}") from e
    kind = kind or infer_kind_from_config(config)
    if kind == "vision":  # no tokenizer: pixels in, see backbones/vision.py
        if dtype != torch.float32 or quantize or placement:
            raise BackboneError(
                f"{name}: vision backbones are held in float32 only (--dtype float32, "
                "no --quantize, no --device-map); they are small (22M parameters)"
            )
        return _load_vision(path, config, name=name, dtype=dtype, cached=fingerprint_cache)
    classes = {"causal-lm": AutoModelForCausalLM, "seq2seq-lm": AutoModelForSeq2SeqLM}
    cls = classes.get(kind, AutoModel)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise BackboneError(f"cannot load the tokenizer in {path}: {e}") from e
    cache_kind = kind if fingerprint_cache else None
    try:
        model, fp = _load_held(
            cls, path, config, dtype, known_fingerprint, cache_kind, placement, quantize, device
        )
    except BackboneError:
        raise
    except Exception as e:
        raise BackboneError(f"cannot load the {kind} model in {path}: {e}") from e
    return make_backbone(
        model, tokenizer, name=name, kind=kind, known_fingerprint=fp, quantize=quantize
    )


def _load_vision(path: Path, config: Any, *, name: str, dtype: torch.dtype, cached: bool):
    from softprompt.backbones.vision import is_vision_config, load_vision_dir

    if not is_vision_config(config):
        raise BackboneError(
            f"{path} holds a {config.model_type} model; vision backbones must be "
            "ViT, DINOv2 or DeiT"
        )
    backbone = load_vision_dir(path, config, name=name, dtype=dtype, known_fingerprint=None)
    if cached:  # store the hash next to the weights, as for converted GGUF files
        fp = _cached_fingerprint(path, backbone.model, "vision")
        backbone.fingerprint = fp
    return backbone
