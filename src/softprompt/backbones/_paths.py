"""Where softprompt keeps files it makes itself (caches of converted backbones)."""

from __future__ import annotations

from pathlib import Path

from softprompt.files import softprompt_home


def backbone_cache_root() -> Path:
    """The folder holding one sub-folder per cached (converted) backbone."""
    return softprompt_home() / "backbones"
