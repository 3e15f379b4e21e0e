"""VPT-shallow (Jia et al. 2022, arXiv:2203.12119): n prompt tokens after [CLS] at the input.

The tokens go through every layer of the frozen vision transformer and are dropped at
the end (inject/vision.py); only they and the task's linear head train.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from softprompt.errors import ConfigError
from softprompt.inject.vision import VisionPrompt
from softprompt.methods.registry import MethodContext, register_method


@dataclass
class VptConfig:
    """`n_tokens` prompt tokens (per layer for vpt-deep), VPT's uniform Xavier init
    (bound sqrt(6 / (3 * patch^2 + d)), as if the prompt were a patch embedding),
    seeded by `seed`. `lr_scale` multiplies the learning rate of the prompt only (the
    head keeps train.lr): the prompt is stored as raw / lr_scale and used as
    raw * lr_scale, which under Adam moves it lr_scale times faster."""

    BOUNDS: ClassVar[dict[str, tuple[int, int]]] = {"n_tokens": (1, 4096), "seed": (0, 2**63 - 1)}
    n_tokens: int = 10
    seed: int = 0
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.n_tokens < 1:
            raise ConfigError(f"method.n_tokens: must be >= 1, got {self.n_tokens}")
        if not self.lr_scale > 0:
            raise ConfigError(f"method.lr_scale: must be > 0, got {self.lr_scale}")


def vpt_init(config: VptConfig, context: MethodContext, layers: int, name: str) -> torch.Tensor:
    """(layers, n, d) uniform in +-sqrt(6 / (3 * patch^2 + d)), divided by lr_scale."""
    spec = context.backbone.spec
    if spec.kind != "vision":
        raise ConfigError(
            f"method.name: {name} needs a vision backbone (ViT/DINOv2/DeiT); "
            f"{context.backbone.name!r} is a {spec.kind}"
        )
    patch = int(getattr(context.backbone.tokenizer, "patch_size", 14))
    bound = math.sqrt(6.0 / (3 * patch * patch + spec.hidden_size))
    generator = torch.Generator().manual_seed(config.seed)
    shape = (layers, config.n_tokens, spec.hidden_size)
    tokens = (torch.rand(shape, generator=generator) * 2 - 1) * bound
    return tokens / config.lr_scale


@register_method("vpt-shallow", VptConfig)
class VptShallow(nn.Module):
    # `softprompt methods` prints this: what it is, and when to pick it
    summary = (
        "images: n tokens at a ViT's input with a linear head; about the linear probe, pick "
        "vpt-deep to gain"
    )

    def __init__(self, config: VptConfig, context: MethodContext) -> None:
        super().__init__()
        self.config = config
        self.embeddings = nn.Parameter(
            vpt_init(config, context, 1, "vpt-shallow")[0]
        )  # (n, d), scaled

    def flatten(self) -> None:
        return None

    def forward(self) -> VisionPrompt:
        return VisionPrompt(embeds=(self.embeddings * self.config.lr_scale).unsqueeze(0))
