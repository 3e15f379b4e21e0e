"""A LoRA baseline (`train --compare lora`, a compare unit) exported as a PEFT LoRA folder
(`export --format peft`): PEFT loads it with the same logits, and `--backbone-adapter`
merges it so prompts train on the domain-adapted backbone."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from softprompt.backbones import load_backbone
from softprompt.cli import main
from softprompt.data import Example
from softprompt.errors import PromptFileError
from softprompt.model import PromptModel
from softprompt.recipes.baselines import TuneConfig, TunedModel
from softprompt.recipes.export import export_lora
from softprompt.tasks import TaskConfig

TASK = TaskConfig(labels=["negative", "positive"], template="{text} :")
ROWS = [Example("a fine film", "positive"), Example("dull and far too long", "negative")]


@pytest.fixture(scope="module")
def lora_file(llama_folder, tmp_path_factory):
    """A LoRA baseline file whose B matrices were moved off zero (as training would)."""
    model = TunedModel(load_backbone(str(llama_folder)), TASK, TuneConfig())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
    path = model.save(tmp_path_factory.mktemp("lora") / "lora.safetensors")
    return model.eval(), path


def test_peft_loads_the_export_with_the_same_logits(lora_file, llama_folder, tmp_path):
    model, path = lora_file
    out = tmp_path / "adapter"
    assert main(["export", str(path), "--format", "peft", "--out", str(out)]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    base = AutoModelForCausalLM.from_pretrained(llama_folder)
    peft = PeftModel.from_pretrained(base, out).eval()
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.no_grad():
        want = model.tuned(input_ids=ids).logits
        got = peft(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_merged_as_backbone_adapter_scores_as_the_lora(lora_file, llama_folder, tmp_path):
    """A prompt-free model on the merged backbone scores rows as the LoRA model did, and
    its fingerprint names the adapter (a prompt trained on it refuses the plain one)."""
    model, path = lora_file
    out = export_lora(path, tmp_path / "adapter")
    adapted = load_backbone(str(llama_folder), adapter=out)
    plain = load_backbone(str(llama_folder))
    zero = PromptModel(adapted, TASK, "none").eval()
    with torch.no_grad():
        want = model(model.collate(ROWS)).scores
        got = zero(zero.collate(ROWS)).scores
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert adapted.fingerprint != plain.fingerprint


def test_a_prompt_file_or_a_full_fine_tune_is_not_a_lora(llama_folder, tmp_path):
    full = TunedModel(load_backbone(str(llama_folder)), TASK, TuneConfig(kind="full"))
    path = full.save(tmp_path / "full.safetensors")
    with pytest.raises(PromptFileError, match="not a LoRA baseline"):
        export_lora(path, tmp_path / "out")
