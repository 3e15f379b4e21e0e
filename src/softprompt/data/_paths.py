"""Where softprompt keeps files it downloads once and reuses offline."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = "~/.cache/softprompt"


def softprompt_home() -> Path:
    """The cache root; `SOFTPROMPT_HOME` overrides it so tests and CI can isolate state."""
    return Path(os.environ.get("SOFTPROMPT_HOME") or DEFAULT_HOME).expanduser()


def downloads_dir() -> Path:
    """Where the install script puts source archives (e.g. the vaderSentiment sdist)."""
    return softprompt_home() / "downloads"


def downloads_dir_for_shell() -> str:
    """The downloads folder as a user would type it, so printed commands stay copy-pasteable."""
    if os.environ.get("SOFTPROMPT_HOME"):
        return str(downloads_dir())
    return f"{DEFAULT_HOME}/downloads"
