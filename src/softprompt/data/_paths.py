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
    return home_for_shell("downloads")


def home_for_shell(*parts: str) -> str:
    """A path under softprompt's home as a user would type it: `~/.cache/softprompt/...`
    unless SOFTPROMPT_HOME is set (then that path, in full)."""
    if os.environ.get("SOFTPROMPT_HOME"):
        return str(softprompt_home().joinpath(*parts))
    return "/".join((DEFAULT_HOME, *parts))
