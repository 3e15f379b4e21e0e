"""Smoke test on the real dinov2-small and fashion-mnist: a few VPT-deep steps train the
prompt and head, leave the 22M backbone weights bit-identical, and round-trip the file."""

from __future__ import annotations

import math

import pytest
import torch

from softprompt.api import build_model
from softprompt.backbones import load_backbone
from softprompt.data import Dataset, load_dataset
from softprompt.data.images import locate_fashion_mnist
from softprompt.model import PromptModel
from softprompt.train import TrainConfig, train

pytestmark = pytest.mark.slow


def test_vpt_deep_steps_on_dinov2_small(tmp_path):
    if locate_fashion_mnist() is None:
        pytest.skip("fashion-mnist not installed (scripts/setup.sh installs dataset-fashion-mnist)")
    backbone = load_backbone("dinov2-small")
    full = load_dataset("fashion-mnist")
    data = Dataset(
        name=full.name,
        task=full.task,
        labels=full.labels,
        train=full.train[:64],
        validation=full.validation[:8],
        test=full.test[:8],
    )
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    model = build_model(backbone, data, {"name": "vpt-deep", "n_tokens": 4}, {})
    assert model.num_trainable() == 12 * 4 * 384 + 384 * 10 + 10
    config = TrainConfig(steps=2, batch_size=4, eval_every=2, lr=0.01, warmup_steps=0)
    result = train(model, data, config, tmp_path, progress=False)
    assert all(math.isfinite(h["loss"]) for h in result.history if h["kind"] == "train")
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    loaded = PromptModel.load(result.prompt_path, backbone)
    refs = [e.text for e in data.test]
    assert result.best_step == 2  # the one evaluation: the file holds the final state
    assert loaded.predict(refs) == model.predict(refs)
