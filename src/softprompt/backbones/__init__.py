"""Frozen pretrained backbones: loading, shape facts (`BackboneSpec`) and fingerprints.

Only local files are used: built-in backbones come from pip packages that carry their
weights, GGUF files are dequantized once and cached under ``$SOFTPROMPT_HOME``.
"""

from __future__ import annotations

import os

# Never reach a model hub: every backbone comes from a local folder or package. Set here
# (every backbones module runs this first) before transformers / huggingface_hub are
# imported, as they read these at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from softprompt.backbones._core import (  # noqa: E402
    Backbone,
    BackboneSpec,
    fingerprint,
    freeze,
    from_pretrained_model,
)
from softprompt.backbones._frozen_int8 import dequantized_blocks, dequantized_rows  # noqa: E402
from softprompt.backbones._loading import (  # noqa: E402
    DEFAULT_BACKBONE,
    BackboneInfo,
    builtin_backbones,
    load_backbone,
)
from softprompt.backbones._paths import softprompt_home  # noqa: E402
from softprompt.backbones._placement import place  # noqa: E402
from softprompt.backbones._stream import fix_mmap_threshold  # noqa: E402

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "BackboneInfo",
    "BackboneSpec",
    "builtin_backbones",
    "dequantized_blocks",
    "dequantized_rows",
    "fingerprint",
    "fix_mmap_threshold",
    "freeze",
    "from_pretrained_model",
    "load_backbone",
    "place",
    "softprompt_home",
]
