"""Where softprompt keeps files it makes itself (caches of converted backbones)."""

from __future__ import annotations

import os
from pathlib import Path


def softprompt_home() -> Path:
    """The folder for softprompt's own files: ``$SOFTPROMPT_HOME`` or ``~/.cache/softprompt``.

    The folder is not created here; writers create what they need inside it.
    """
    home = os.environ.get("SOFTPROMPT_HOME")
    if home:
        return Path(home).expanduser()
    return Path.home() / ".cache" / "softprompt"


def backbone_cache_root() -> Path:
    """The folder holding one sub-folder per cached (converted) backbone."""
    return softprompt_home() / "backbones"
