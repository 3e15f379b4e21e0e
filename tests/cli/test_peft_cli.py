"""`softprompt export --format peft` and `softprompt import-peft` end to end on a tiny
backbone saved as an HF folder (the logit checks against PEFT are in
tests/core/test_peft_interop.py)."""

from __future__ import annotations

import json

import torch
from toydata import LABELS, TEMPLATE

from softprompt import cli
from softprompt.backbones import load_backbone
from softprompt.model import PromptModel
from softprompt.tasks import TaskConfig


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _prompt_file(folder, path, method: str = "multitask-prompt"):
    backbone = load_backbone(str(folder))
    model = PromptModel(
        backbone,
        TaskConfig(labels=list(LABELS), template=TEMPLATE),
        method,
        {"n_tokens": 3, "rank": 2} if method == "multitask-prompt" else {"n_tokens": 3},
    )
    with torch.no_grad():  # off the init, where U Vᵀ is all ones
        for param in model.parameters():
            param.add_(0.3 * torch.randn(param.shape))
    return model.save(path)


def test_export_then_import_scores_the_same(capsys, tmp_path, tiny_backbone_folder):
    source = _prompt_file(tiny_backbone_folder, tmp_path / "mpt.safetensors")
    code, out, err = _main(capsys, "export", source, "--format", "peft", "--out", tmp_path / "a")
    assert code == 0, err
    assert "MULTITASK_PROMPT_TUNING" in out
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["num_virtual_tokens"] == 4  # BOS folded in front of the 3 tokens
    back = tmp_path / "back.safetensors"
    argv = ("import-peft", tmp_path / "a", "--backbone", tiny_backbone_folder, "--out", back)
    code, out, err = _main(capsys, *argv)
    assert code == 0, err
    texts = ["good fun movie", "a dull and boring plot"]
    backbone = load_backbone(str(tiny_backbone_folder))
    before = PromptModel.load(source, backbone).predict(texts)
    after = PromptModel.load(back, backbone).predict(texts)
    for a, b in zip(before, after, strict=True):
        assert a["label"] == b["label"]
        for label in LABELS:
            assert abs(a["scores"][label] - b["scores"][label]) < 1e-5


def test_import_of_a_bad_folder_exits_2_naming_the_file(capsys, tmp_path, tiny_backbone_folder):
    (tmp_path / "a").mkdir()
    argv = (
        "import-peft",
        tmp_path / "a",
        "--backbone",
        tiny_backbone_folder,
        "--out",
        tmp_path / "p",
    )
    code, _, err = _main(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and "adapter_config.json: missing" in err


def test_export_peft_onto_a_file_exits_2(capsys, tmp_path, tiny_backbone_folder):
    source = _prompt_file(tiny_backbone_folder, tmp_path / "p.safetensors", "soft-prompt")
    code, _, err = _main(capsys, "export", source, "--format", "peft", "--out", source)
    assert code == 2 and "--out" in err and "folder" in err
