"""`softprompt train --device-map auto` (issue 19): the run trains and scores through
Accelerate's dispatch exactly as without it (on this CPU-only machine `auto` puts the
whole model on the CPU, behind the same load path a multi-device map takes)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from softprompt import cli


def test_train_with_device_map_auto_gives_the_plain_runs_prompt(train_argv, tmp_path):
    runs = {}
    for name, extra in (("plain", ()), ("mapped", ("--device-map", "auto"))):
        out = tmp_path / name
        assert cli.main([str(a) for a in train_argv(out, *extra)]) == 0
        runs[name] = out
    plain, mapped = (load_file(runs[n] / "prompt.safetensors") for n in ("plain", "mapped"))
    assert plain.keys() == mapped.keys()
    assert all(torch.allclose(plain[k], mapped[k], atol=1e-6) for k in plain)
    settings = json.loads((runs["mapped"] / "run.json").read_text())
    assert settings["config"]["backbone_device_map"] == "auto"  # kept for --resume
