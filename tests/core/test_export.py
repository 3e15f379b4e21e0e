"""Export: a prompt without its training-only encoder or MLP scores exactly as before,
in a much smaller file that keeps the training record."""

from __future__ import annotations

import pytest
import torch

from softprompt.api import export_prompt
from softprompt.model import PromptModel, load_prompt_meta

CASES = [
    ("p-tuning", {"encoder": "mlp"}, "tiny_llama", {}, "soft-prompt"),
    ("p-tuning", {"encoder": "lstm"}, "tiny_gpt2", {}, "soft-prompt"),
    ("p-tuning", {"encoder": "mlp"}, "tiny_bert", {}, "soft-prompt"),  # with a linear head
    ("prefix-tuning", {}, "tiny_llama", {}, "prefix-tuning"),
    (
        "prefix-tuning",
        {},
        "tiny_gpt2",
        {"verbalizer": {"negative": [" very bad"], "positive": [" good"]}},
        "prefix-tuning",
    ),
]


def _perturbed(make_model, backbone, method, options, task) -> PromptModel:
    """A model whose every tensor differs from its init (as after training)."""
    model = make_model(backbone, method, task=task, n_tokens=3, hidden=16, **options)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model


@pytest.mark.parametrize("method,options,name,task,flat_method", CASES)
def test_flattened_model_scores_exactly_the_same(
    make_model, backbones, toy_dataset, method, options, name, task, flat_method
):
    model = _perturbed(make_model, backbones[name], method, options, task)
    flat = model.flattened()
    assert flat.method_name == flat_method and flat.flattened() is flat
    assert flat.num_trainable() < model.num_trainable()
    batch = model.collate(toy_dataset.test)
    with torch.no_grad():
        torch.testing.assert_close(flat(batch).scores, model(batch).scores, atol=1e-6, rtol=0)
    if name == "tiny_bert":  # the task head comes along unchanged
        assert torch.equal(flat.task.head.weight, model.task.head.weight)


@pytest.mark.parametrize(
    "method,options", [("soft-prompt", {}), ("prefix-tuning", {"reparameterize": False})]
)
def test_a_flat_method_flattens_to_itself(make_model, llama, method, options):
    model = make_model(llama, method, n_tokens=3, **options)
    assert model.flattened() is model


def test_export_writes_a_smaller_file_with_the_training_record(
    make_model, llama, toy_dataset, tmp_path
):
    model = _perturbed(make_model, llama, "prefix-tuning", {}, {})
    source = model.save(tmp_path / "trained.safetensors", dataset="toy", metrics={"step": 7})
    out = export_prompt(source, tmp_path / "flat.safetensors", llama)
    assert out.stat().st_size < source.stat().st_size
    meta = load_prompt_meta(out)
    assert meta["method"]["options"]["reparameterize"] is False
    assert meta["flattened_from"]["options"]["reparameterize"] is True
    assert (meta["dataset"], meta["metrics"]) == ("toy", {"step": 7})
    loaded = PromptModel.load(out, llama)
    batch = model.collate(toy_dataset.test)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).scores, model(batch).scores, atol=1e-6, rtol=0)
