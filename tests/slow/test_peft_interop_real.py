"""PEFT interop on SmolLM2-135M (no BOS, grouped-query attention: 3 of 9 heads hold K/V):
each of the four prompt types exported and loaded by PEFT, and made by PEFT and imported,
gives the other side's logits on real sentences."""

from __future__ import annotations

import peft
import pytest
import torch

from softprompt.backbones import load_backbone
from softprompt.interop.peft import export_peft
from softprompt.interop.peft_import import import_peft
from softprompt.model import PromptModel
from softprompt.tasks import TaskConfig

pytestmark = pytest.mark.slow

TEXTS = ["A gorgeous, heartfelt film.", "Two hours I will never get back, sadly."]
OPTIONS = {
    "soft-prompt": {"n_tokens": 5},
    "p-tuning": {"n_tokens": 5, "hidden": 64},
    "prefix-tuning": {"n_tokens": 5, "hidden": 64},
    "multitask-prompt": {"n_tokens": 5, "rank": 2},
}
PEFT_CONFIGS = {
    "PROMPT_TUNING": lambda **c: peft.PromptTuningConfig(**c),
    "P_TUNING": lambda **c: peft.PromptEncoderConfig(**c, encoder_hidden_size=64),
    "PREFIX_TUNING": lambda **c: peft.PrefixTuningConfig(
        **c, prefix_projection=True, encoder_hidden_size=64
    ),
    "MULTITASK_PROMPT_TUNING": lambda **c: peft.MultitaskPromptTuningConfig(
        **c, num_tasks=2, num_ranks=2
    ),
}


@pytest.fixture(scope="module")
def smollm2():
    return load_backbone("smollm2-135m")


def _batch(backbone):
    encoded = backbone.tokenizer(TEXTS, padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]  # right-padded, no BOS


@torch.no_grad()
def _compare(ours: PromptModel, theirs, front: int, **kwargs) -> float:
    ids, mask = _batch(ours.backbone)
    hidden = ours.injector.hidden_states(ours.prompt(), ids, mask)
    mine = ours.injector.logits(hidden)  # (B, T, V)
    logits = theirs(input_ids=ids, attention_mask=mask, **kwargs).logits[:, front:]
    real = mask.bool()
    gap = float((mine[real] - logits[real]).abs().max())
    scale = float(logits[real].abs().max())
    print(f"max |logit difference| {gap:.2e} (logits up to {scale:.1f})")
    return gap


@pytest.mark.parametrize("method", list(OPTIONS))
def test_exported_prompt_gives_our_logits_in_peft(smollm2, tmp_path, method):
    task = TaskConfig(kind="generation", template="{text}")
    ours = PromptModel(smollm2, task, method, OPTIONS[method])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in ours.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    export_peft(ours, tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(
        load_backbone("smollm2-135m").model, tmp_path / "adapter"
    )
    front = 0 if method == "prefix-tuning" else 5
    extra = {"task_ids": torch.zeros(len(TEXTS), dtype=torch.long)} if "multi" in method else {}
    assert _compare(ours, theirs, front, **extra) < 1e-3


@pytest.mark.parametrize("peft_type", list(PEFT_CONFIGS))
def test_peft_adapter_gives_peft_logits_here(smollm2, tmp_path, peft_type):
    config = PEFT_CONFIGS[peft_type](task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=5)
    torch.manual_seed(0)
    theirs = peft.get_peft_model(load_backbone("smollm2-135m").model, config)
    with torch.no_grad():
        for param in theirs.prompt_encoder.default.parameters():
            param.copy_(0.05 * torch.randn(param.shape))
    theirs.eval().save_pretrained(tmp_path / "adapter")
    multi = peft_type.startswith("MULTI")
    out = import_peft(
        tmp_path / "adapter", smollm2, tmp_path / "p.safetensors", task_id=1 if multi else None
    )
    ours = PromptModel.load(out, smollm2)
    front = 0 if peft_type == "PREFIX_TUNING" else 5
    extra = {"task_ids": torch.ones(len(TEXTS), dtype=torch.long)} if multi else {}
    assert _compare(ours, theirs, front, **extra) < 1e-3
