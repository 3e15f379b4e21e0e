"""VPT-deep (Jia et al. 2022, arXiv:2203.12119): n fresh prompt tokens at every layer.

The frozen model sees them as per-layer key/value prefixes (inject/vision.py), which
is exactly the paper's insert-then-discard formulation without computing the prompt
tokens' own outputs. Without prompt dropout, as the paper's default.
"""

from __future__ import annotations

from torch import nn

from softprompt.inject.vision import VisionPrompt
from softprompt.methods.registry import MethodContext, register_method
from softprompt.methods.vpt_shallow import VptConfig, vpt_init


@register_method("vpt-deep", VptConfig)
class VptDeep(nn.Module):
    # `softprompt methods` prints this: what it is, and when to pick it
    summary = (
        "images: n tokens at every ViT layer with a linear head; pick it for image "
        "classification on a frozen ViT"
    )

    def __init__(self, config: VptConfig, context: MethodContext) -> None:
        super().__init__()
        self.config = config
        layers = context.backbone.spec.num_layers
        self.embeddings = nn.Parameter(
            vpt_init(config, context, layers, "vpt-deep")
        )  # (L, n, d), scaled

    def flatten(self) -> None:
        return None

    def forward(self) -> VisionPrompt:
        return VisionPrompt(
            deep=(self.embeddings * self.config.lr_scale).unsqueeze(1)
        )  # (L, 1, n, d)
