"""Gradient checkpointing of the frozen backbone (`train.gradient_checkpointing`): every
prompt method on causal decoders (and on BERT) gets the gradients it gets without it, the layers'
activations are really freed, the training loop ends at the same prompt, and the reason
transformers' own switch is not used (it drops a prefix passed as a cache)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from softprompt import cli
from softprompt.backbones.tiny import tiny_llama
from softprompt.errors import ConfigError
from softprompt.inject.checkpointing import checkpointable_layers, layer_checkpointing
from softprompt.model import MultiTaskModel
from softprompt.train import train

CAUSAL = ["tiny_llama", "tiny_gpt2"]
ENCODERS = ["tiny_bert"]  # deep prompts (P-tuning v2) reach BERT as a cache too
METHODS = [
    ("soft-prompt", {"n_tokens": 4}),
    ("prefix-tuning", {"n_tokens": 3}),
    ("prefix-tuning", {"n_tokens": 3, "reparameterize": False}),
    ("p-tuning", {"n_tokens": 3, "encoder": "lstm", "hidden": 8}),
    ("multitask-prompt", {"n_tokens": 3, "rank": 2}),
]


def _loss_and_grads(model, batch, checkpointing: bool):
    model.zero_grad(set_to_none=True)
    with layer_checkpointing(model.backbone, checkpointing):
        loss = model(batch).loss
    loss.backward()  # outside the block: the replay must not depend on it
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _assert_same(plain, checkpointed):
    (loss_a, grads_a), (loss_b, grads_b) = plain, checkpointed
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        assert grad.abs().sum() > 0, f"{name} got no gradient"
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("name", CAUSAL + ENCODERS)
@pytest.mark.parametrize("method,options", METHODS, ids=lambda v: str(v))
def test_gradients_equal_with_and_without_checkpointing(
    backbones, make_model, toy_dataset, name, method, options
):
    model = make_model(backbones[name], method, **options)
    batch = model.collate(toy_dataset.train[:6])  # rows of different lengths: padding
    _assert_same(_loss_and_grads(model, batch, False), _loss_and_grads(model, batch, True))


@pytest.mark.parametrize("name", CAUSAL)
def test_mixed_prompts_per_row_equal_with_checkpointing(backbones, make_model, toy_dataset, name):
    """Rows with different prompts (a soft prompt and a prefix of another length) share
    one per-row cache; the replay restores it for every layer."""
    backbone = backbones[name]
    model = MultiTaskModel(
        {
            "soft": make_model(backbone, "soft-prompt", n_tokens=4),
            "prefix": make_model(backbone, "prefix-tuning", n_tokens=2),
        }
    )
    rows = toy_dataset.train[:6]
    batch = model.collate([("soft" if i % 2 else "prefix", e) for i, e in enumerate(rows)])
    _assert_same(_loss_and_grads(model, batch, False), _loss_and_grads(model, batch, True))


def _saved_bytes(model, batch, checkpointing: bool) -> int:
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with layer_checkpointing(model.backbone, checkpointing):
            loss = model(batch).loss
    loss.backward()
    return total


@pytest.mark.parametrize("method,options", METHODS[:2], ids=lambda v: str(v))
def test_checkpointing_frees_the_layers_activations(
    backbones, make_model, toy_dataset, method, options
):
    model = make_model(backbones["tiny_llama"], method, **options)
    batch = model.collate(toy_dataset.train[:8])
    plain, checkpointed = (_saved_bytes(model, batch, c) for c in (False, True))
    assert checkpointed < 0.5 * plain, (plain, checkpointed)


def test_no_gradients_means_no_checkpointing(backbones, make_model, toy_dataset):
    """Evaluation under no_grad runs the layers as they are (nothing to replay)."""
    model = make_model(backbones["tiny_llama"], "prefix-tuning", n_tokens=3)
    batch = model.collate(toy_dataset.test)
    with torch.no_grad():
        plain = model(batch).scores
        with layer_checkpointing(model.backbone):
            checkpointed = model(batch).scores
    torch.testing.assert_close(checkpointed, plain, rtol=0, atol=0)


@pytest.mark.parametrize("method,options", METHODS[1:3], ids=lambda v: str(v))
def test_training_with_checkpointing_ends_at_the_same_prompt(
    backbones, make_model, toy_dataset, fast_config, tmp_path, method, options
):
    prompts = []
    for checkpointing in (False, True):
        model = make_model(backbones["tiny_gpt2"], method, **options)
        config = fast_config(gradient_checkpointing=checkpointing)
        train(model, toy_dataset, config, tmp_path / str(checkpointing))
        prompts.append({k: v.clone() for k, v in model.state_dict().items()})
    assert prompts[0].keys() == prompts[1].keys()
    for key, value in prompts[0].items():
        torch.testing.assert_close(prompts[1][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_transformers_own_checkpointing_drops_the_prefix(make_model, toy_dataset, caplog):
    """Why softprompt checkpoints layers itself: under transformers' switch (which also
    needs train mode) the model sets `use_cache=False` and each checkpointed layer
    `cache=None`, so the prompt's keys/values never reach attention (here the padding
    mask that counts the prefix no longer fits, and the forward fails)."""
    backbone = tiny_llama()
    model = make_model(backbone, "prefix-tuning", n_tokens=3)
    batch = model.collate(toy_dataset.train[:4])
    backbone.model.activation_checkpointing_enable({"use_reentrant": False})
    backbone.model.train()
    with pytest.raises(RuntimeError, match="must match"):
        model(batch)
    assert "Setting `cache=None`" in caplog.text


def test_a_backbone_without_checkpointable_layers_is_named():
    stub = SimpleNamespace(name="stub", model=torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert not checkpointable_layers(stub)
    with pytest.raises(ConfigError, match="train.gradient_checkpointing: backbone 'stub'"):
        with layer_checkpointing(stub):
            pass


def test_cli_flag_sets_the_config_key():
    parser = cli.build_parser()
    config = cli._config_from_args(parser.parse_args(["train", "--gradient-checkpointing"]))
    assert config.train.gradient_checkpointing is True
