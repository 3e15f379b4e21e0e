"""The resume checkpoint holds what trains, not a copy of the frozen backbone.

Before: a LoRA run's checkpoint held its whole private backbone copy (650 MB on
SmolLM2-135M, 6 GB on a 1.5B model, at every save), and a full fine-tuning run's held
the frozen W0 beside its trainable delta: a compare over a few seeds filled the disk.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from softprompt.files import atomic_write_bytes
from softprompt.promptfile import read_prompt_file
from softprompt.recipes.baselines import TuneConfig, TunedModel
from softprompt.tasks.base import TaskConfig
from softprompt.train import train
from softprompt.train.loop import CHECKPOINT_FILE

LABELS = ["negative", "positive"]


def _tuned(backbone, kind: str) -> TunedModel:
    task = TaskConfig(labels=LABELS, head="linear")
    return TunedModel(backbone, task, TuneConfig(kind=kind, r=2, targets=["q_proj", "v_proj"]))


def _trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_a_checkpoint_holds_only_the_trainable_tensors(
    backbones, toy_dataset, fast_config, tmp_path, kind
):
    backbone = backbones["tiny_llama"]  # tied embeddings: full keeps that weight frozen
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    model = _tuned(backbone, kind)
    train(model, toy_dataset, fast_config(steps=4), tmp_path, progress=False, stop_after=2)
    # the baseline's tree shares the backbone's storage, which training never writes
    assert all(torch.equal(before[k], v) for k, v in backbone.model.state_dict().items())
    saved = load_file(tmp_path / CHECKPOINT_FILE)
    prefix = f"model.models.{toy_dataset.name}."  # the loop's one-task wrapper
    model_keys = {k.removeprefix(prefix) for k in saved if k.startswith("model.")}
    assert model_keys == _trainable(model)
    assert any(not p.requires_grad for p in model.parameters())  # something was left out


def _resumed_prompt(backbone, toy_dataset, config, out, *, old_format: bool):
    first = _tuned(backbone, "lora")
    train(first, toy_dataset, config, out, progress=False, stop_after=2)
    if old_format:  # as written before: every tensor of the model, frozen ones included
        path = out / CHECKPOINT_FILE
        data = path.read_bytes()
        tensors = load_file(path)
        prefix = f"model.models.{toy_dataset.name}."  # the loop's one-task wrapper
        tensors.update({f"{prefix}{k}": v.clone() for k, v in first.state_dict().items()})
        size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + size])["__metadata__"]
        atomic_write_bytes(path, st_save(tensors, metadata=metadata))
    result = train(_tuned(backbone, "lora"), toy_dataset, config, out, progress=False, resume=True)
    return read_prompt_file(result.prompt_path)[0]


@pytest.mark.parametrize("old_format", [False, True])
def test_a_lora_run_resumes_to_the_uninterrupted_result(
    backbones, toy_dataset, fast_config, tmp_path, old_format
):
    """Both the new checkpoint and one written before (with the frozen tensors in)."""
    backbone, config = backbones["tiny_llama"], fast_config(steps=4, lr=0.05)
    straight = train(_tuned(backbone, "lora"), toy_dataset, config, tmp_path / "a", progress=False)
    expected = read_prompt_file(straight.prompt_path)[0]
    resumed = _resumed_prompt(backbone, toy_dataset, config, tmp_path / "b", old_format=old_format)
    assert resumed.keys() == expected.keys()
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), key
