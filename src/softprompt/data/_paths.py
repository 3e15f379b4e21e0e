"""Where softprompt keeps files it downloads once and reuses offline."""

from __future__ import annotations

import os
from pathlib import Path

from softprompt.files import DEFAULT_HOME, softprompt_home


def downloads_dir() -> Path:
    """Where the install script puts source archives (e.g. the vaderSentiment sdist)."""
    return softprompt_home() / "downloads"


def downloads_dir_for_shell() -> str:
    """The downloads folder as a user would type it, so printed commands stay copy-pasteable."""
    if os.environ.get("SOFTPROMPT_HOME"):
        return str(downloads_dir())
    return f"{DEFAULT_HOME}/downloads"
