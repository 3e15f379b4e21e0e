"""Tiny random vision transformers built in code (for tests), and a tiny image folder writer.

Like `softprompt.backbones.tiny` for text: a few thousand parameters, seeded, so tests
of visual prompts run in milliseconds without real weights.
"""

from __future__ import annotations

import torch

from softprompt.backbones._core import Backbone
from softprompt.backbones.vision import make_vision_backbone


def tiny_dinov2(seed: int = 0) -> Backbone:
    """3 layers, hidden 32, 4 heads, patch 4; layer scales and position embeddings
    randomized so nothing is an identity that could hide a bug."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        mlp_ratio=2,
        patch_size=4,
        image_size=16,
        layerscale_value=0.5,
        layer_norm_eps=1e-6,
    )
    model = Dinov2Model(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lambda1" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
            if "position_embeddings" in name or "cls_token" in name:
                p.normal_(0.0, 0.5)
    return make_vision_backbone(model, name="tiny-dinov2")


def tiny_vit(seed: int = 0) -> Backbone:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        patch_size=4,
        image_size=16,
    )
    return make_vision_backbone(ViTModel(config, add_pooling_layer=False).eval(), name="tiny-vit")


def write_class_images(root, per_class: int = 10, size: int = 16) -> None:
    """Two classes a human could tell apart: bright left half (left/) or right half (right/)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, half in (("left", 0), ("right", 1)):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3))
            pixels[:, half * size // 2 : (half + 1) * size // 2] += 180
            Image.fromarray(pixels.astype("uint8")).save(folder / f"{i}.png")
