"""Vision backbones from local folders, and the text workflow (train, eval, predict,
info, export) on images, end to end through the CLI with a tiny DINOv2 folder."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.backbones import load_backbone
from softprompt.backbones.tiny_vision import tiny_dinov2, write_class_images
from softprompt.cli import main


def _deit_folder(path):
    from transformers import DeiTConfig, DeiTModel

    torch.manual_seed(0)
    config = DeiTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        patch_size=4,
        image_size=16,
    )
    DeiTModel(config, add_pooling_layer=False).save_pretrained(path)


@pytest.mark.parametrize("arch", ["dinov2", "deit"])
def test_local_vision_folder_loads_as_a_vision_backbone(arch, tmp_path):
    if arch == "dinov2":
        tiny = tiny_dinov2()
        tiny.model.save_pretrained(tmp_path / arch)
    else:
        _deit_folder(tmp_path / arch)
    backbone = load_backbone(str(tmp_path / arch))
    assert backbone.spec.kind == "vision" and backbone.spec.architecture == arch
    assert backbone.fingerprint.startswith(f"{arch}-")
    assert all(not p.requires_grad for p in backbone.model.parameters())
    if arch == "dinov2":
        assert backbone.fingerprint == tiny.fingerprint  # same weights, same fingerprint
    from softprompt.inject.vision import VisionInjector, VisionPrompt

    injector = VisionInjector(backbone)
    assert injector.front == (2 if arch == "deit" else 1)  # DeiT's distillation token
    deep = torch.zeros(backbone.spec.num_layers, 1, 3, 32)
    out = injector.image_states(VisionPrompt(deep=deep), torch.randn(2, 3, 16, 16))
    assert out.shape == (2, injector.front + 16, 32)


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_eval_predict_export_on_images(tmp_path, capsys):
    tiny_dinov2().model.save_pretrained(tmp_path / "vit")
    write_class_images(tmp_path / "imgs", per_class=10)
    out = tmp_path / "run"
    common = ["--backbone", str(tmp_path / "vit"), "--dataset", str(tmp_path / "imgs")]
    code, stdout, err = _run(
        ["train", *common, "--method", "vpt-deep", "--n-tokens", "3", "--image-size", "16"]
        + ["--steps", "4", "--batch-size", "4", "--eval-every", "2", "--lr", "0.05"]
        + ["--out", str(out)],
        capsys,
    )
    assert code == 0, err
    assert "head-only linear probe" in stdout and "vpt-deep (best of step" in stdout
    for name in ("prompt.safetensors", "report.md", "curves.png", "head-only/prompt.safetensors"):
        assert (out / name).is_file(), name
    prompt = str(out / "prompt.safetensors")

    code, stdout, err = _run(["eval", prompt, "--split", "test"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["examples"] == 2

    image = tmp_path / "imgs" / "left" / "0.png"
    code, stdout, err = _run(["predict", prompt, str(image)], capsys)
    assert code == 0, err
    line = json.loads(stdout)
    assert line["image"] == str(image) and line["label"] in ("left", "right")

    code, stdout, err = _run(["predict", prompt, str(tmp_path / "missing.png")], capsys)
    assert code == 2 and "missing.png: no such image file" in err

    code, stdout, err = _run(["info", prompt], capsys)
    assert code == 0 and "vpt-deep" in stdout and "dinov2-" in stdout

    code, stdout, err = _run(
        ["export", prompt, "--out", str(tmp_path / "flat.safetensors")], capsys
    )
    assert code == 0, err


def test_bad_image_size_flag_is_named(tmp_path, capsys):
    tiny_dinov2().model.save_pretrained(tmp_path / "vit")
    write_class_images(tmp_path / "imgs", per_class=4)
    code, _, err = _run(
        ["train", "--backbone", str(tmp_path / "vit"), "--dataset", str(tmp_path / "imgs")]
        + ["--method", "vpt-shallow", "--image-size", "18", "--out", str(tmp_path / "r")],
        capsys,
    )
    assert code == 2 and "task.image_size: 18 is not a multiple" in err


def test_a_text_method_on_images_says_what_to_use(tmp_path, capsys):
    tiny_dinov2().model.save_pretrained(tmp_path / "vit")
    write_class_images(tmp_path / "imgs", per_class=4)
    code, _, err = _run(
        ["train", "--backbone", str(tmp_path / "vit"), "--dataset", str(tmp_path / "imgs")]
        + ["--method", "soft-prompt", "--out", str(tmp_path / "r")],
        capsys,
    )
    assert code == 2 and "use --method vpt-deep, vpt-shallow or none" in err
