"""`softprompt export`: a prompt file without its training-only parts."""

from __future__ import annotations

from pathlib import Path

from softprompt.backbones import Backbone
from softprompt.model import load_prompt, load_prompt_meta


def export_prompt(
    path: str | Path, out: str | Path, backbone: Backbone | str | None = None
) -> Path:
    """Write `path`'s prompt without its training-only parts (see PromptModel.flattened).

    The training record (run config, metrics, dataset) is carried over, plus the
    method it was flattened from. The scores do not change."""
    model = load_prompt(path, backbone)
    meta = load_prompt_meta(path)
    carried = {k: v for k, v in meta.items() if k not in model.describe() and k != "tensors"}
    carried.pop("file_bytes", None)
    carried.setdefault("flattened_from", model.describe()["method"])  # kept on re-export
    return model.flattened().save(out, **carried)
