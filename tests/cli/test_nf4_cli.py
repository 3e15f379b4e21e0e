"""`softprompt train --quantize nf4` (issue 19) on this CPU: a two-step run on the tiny
backbone writes a prompt that records the quantization, and the run keeps it for
--resume."""

from __future__ import annotations

import json

import pytest

from softprompt import cli
from softprompt.promptfile import read_prompt_file

pytest.importorskip("bitsandbytes", reason="bitsandbytes not installed (--quantize nf4)")


def test_cli_train_with_nf4(train_argv, tmp_path):
    out = tmp_path / "run"
    assert cli.main([str(a) for a in train_argv(out, "--quantize", "nf4")]) == 0
    meta = read_prompt_file(out / "prompt.safetensors")[1]["backbone"]
    assert meta["quantize"] == "nf4"
    assert json.loads((out / "run.json").read_text())["config"]["backbone_quantize"] == "nf4"
