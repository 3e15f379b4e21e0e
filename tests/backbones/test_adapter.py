"""--backbone-adapter: a PEFT LoRA folder merged into the frozen backbone at load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from softprompt import cli
from softprompt.backbones import load_backbone
from softprompt.errors import BackboneError, PromptFileError
from softprompt.model import PromptModel
from softprompt.tasks import TaskConfig

IDS = torch.tensor([[1, 5, 7, 9, 11, 13]])


def _save(backbone, folder: Path) -> Path:
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    return folder


def _adapter(folder: Path, out: Path, targets: list[str], seed: int = 0, **options):
    """A PEFT LoRA with random A and B (so it changes the logits), saved as PEFT saves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(folder)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, **options
    )
    peft = get_peft_model(model, config).eval()
    peft.save_pretrained(out)
    assert (out / "adapter_model.safetensors").is_file()
    return peft


@pytest.mark.parametrize(
    ("name", "targets", "options"),
    [
        ("tiny_llama", ["q_proj", "v_proj"], {}),
        ("tiny_llama", ["q_proj", "o_proj", "down_proj"], {"use_rslora": True}),
        ("tiny_gpt2", ["c_attn"], {"fan_in_fan_out": True}),  # Conv1D: (in, out) weights
    ],
)
def test_merged_logits_equal_peft_adapted_model(backbones, tmp_path, name, targets, options):
    folder = _save(backbones[name], tmp_path / name)
    peft = _adapter(folder, tmp_path / "adapter", targets, **options)
    adapted = load_backbone(str(folder), adapter=tmp_path / "adapter")
    plain = load_backbone(str(folder))
    with torch.no_grad():
        theirs = peft(input_ids=IDS).logits
        ours = adapted.model(input_ids=IDS).logits
        before = plain.model(input_ids=IDS).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert (before - theirs).abs().max() > 1e-3  # the adapter did change the model
    assert adapted.fingerprint.startswith(plain.fingerprint + "+lora-")


def test_prompts_refuse_across_adapted_and_plain_and_say_why(llama_folder, tmp_path):
    _adapter(llama_folder, tmp_path / "a", ["q_proj", "v_proj"], seed=0)
    _adapter(llama_folder, tmp_path / "b", ["q_proj", "v_proj"], seed=1)
    plain = load_backbone(str(llama_folder))
    adapted = load_backbone(str(llama_folder), adapter=tmp_path / "a")
    other = load_backbone(str(llama_folder), adapter=tmp_path / "b")
    assert len({plain.fingerprint, adapted.fingerprint, other.fingerprint}) == 3
    task = TaskConfig(labels=["negative", "positive"], template="review : {text} sentiment :")

    def saved(backbone, name: str) -> Path:
        model = PromptModel(backbone, task, "soft-prompt", {"n_tokens": 2})
        return model.save(tmp_path / name)

    on_adapted, on_plain = saved(adapted, "adapted.sp"), saved(plain, "plain.sp")
    with pytest.raises(PromptFileError, match="with a LoRA adapter merged in; load it with"):
        PromptModel.load(on_adapted, plain)
    with pytest.raises(PromptFileError, match="without a LoRA adapter; load it without"):
        PromptModel.load(on_plain, adapted)
    with pytest.raises(PromptFileError, match="with another LoRA adapter merged in"):
        PromptModel.load(on_adapted, other)
    PromptModel.load(on_adapted, load_backbone(str(llama_folder), adapter=tmp_path / "a"))


def test_a_pickled_adapter_and_other_bad_folders_are_refused(llama_folder, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(
        BackboneError, match="adapter_model.bin is a pickle, which softprompt never"
    ):
        load_backbone(str(llama_folder), adapter=folder)
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    with pytest.raises(BackboneError, match="peft_type is 'IA3'; only a LoRA adapter merges"):
        load_backbone(str(llama_folder), adapter=folder)
    with pytest.raises(BackboneError, match="no adapter_config.json"):
        load_backbone(str(llama_folder), adapter=tmp_path)


def test_train_with_backbone_adapter_records_the_adapted_fingerprint(
    llama_folder, tmp_path, capsys
):
    _adapter(llama_folder, tmp_path / "adapter", ["q_proj", "v_proj"])
    rows = [("good fun", "positive"), ("bad boring", "negative")] * 12
    data = tmp_path / "toy.csv"
    data.write_text(
        "text,label\n" + "".join(f"{t} {i},{label}\n" for i, (t, label) in enumerate(rows))
    )
    out = tmp_path / "run"
    argv = ["train", "--backbone", str(llama_folder), "--backbone-adapter", str(tmp_path / "adapter"),
            "--dataset", str(data), "--n-tokens", "2", "--steps", "2", "--eval-every", "2",
            "--batch-size", "4", "--no-baseline", "--template", "review : {text} sentiment :",
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    meta = json.loads((out / "report.json").read_text())["config"]
    assert meta["backbone_adapter"] == str(tmp_path / "adapter")
    plain = load_backbone(str(llama_folder))
    with pytest.raises(PromptFileError, match="with a LoRA adapter merged in"):
        PromptModel.load(out / "prompt.safetensors", plain)
    capsys.readouterr()
    assert cli.main(["eval", str(out / "prompt.safetensors")]) == 0  # the adapter it recorded
    assert '"accuracy"' in capsys.readouterr().out


def test_serve_with_backbone_adapter_serves_prompts_trained_on_it(
    llama_folder, tmp_path, monkeypatch, capsys
):
    pytest.importorskip("uvicorn")
    import uvicorn

    from softprompt.serve.store import PromptStore

    _adapter(llama_folder, tmp_path / "adapter", ["q_proj", "v_proj"])
    adapted = load_backbone(str(llama_folder), adapter=tmp_path / "adapter")
    task = TaskConfig(labels=["negative", "positive"], template="review : {text} sentiment :")
    path = PromptModel(adapted, task, "soft-prompt", {"n_tokens": 2}).save(tmp_path / "p.sp")
    PromptStore(tmp_path / "store").add("sentiment", path)
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    argv = ["serve", "--store", str(tmp_path / "store"), "--backbone", str(llama_folder)]
    assert cli.main([*argv, "--backbone-adapter", str(tmp_path / "adapter")]) == 0
    assert "1 tasks on" in capsys.readouterr().out
    assert cli.main(argv) == 0 and len(apps) == 2
    said = capsys.readouterr().out
    assert "not serving 'sentiment'" in said and "with a LoRA adapter merged in" in said


def test_search_merges_the_backbone_adapter(llama_folder, tmp_path, capsys):
    data = tmp_path / "toy.csv"
    data.write_text(
        "text,label\n" + "".join(f"good {i},positive\nbad {i},negative\n" for i in range(8))
    )
    argv = ["search", "--backbone", str(llama_folder), "--backbone-adapter", str(tmp_path),
            "--dataset", str(data), "--budget", "1"]  # fmt: skip
    assert cli.main(argv) == 2
    assert f"--backbone-adapter {tmp_path}: no adapter_config.json" in capsys.readouterr().err
