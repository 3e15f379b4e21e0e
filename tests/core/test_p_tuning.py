"""P-tuning: config errors, shapes, the encoder runs once per batch, the output is placed
exactly like a soft prompt, save/load and resume are exact, and a loss that goes down."""

from __future__ import annotations

import pytest
import torch

from softprompt.errors import ConfigError
from softprompt.methods.p_tuning import PTuningConfig
from softprompt.model import PromptModel
from softprompt.train import train

NAMES = ["tiny_llama", "tiny_gpt2", "tiny_bert"]
ENCODERS = ["mlp", "lstm"]


@pytest.mark.parametrize(
    "options,key",
    [
        ({"n_tokens": 0}, "method.n_tokens"),
        ({"encoder": "gru"}, "method.encoder"),
        ({"hidden": 1}, "method.hidden"),
        ({"init": "zeros"}, "method.init"),
        ({"init": "text"}, "method.init_text"),
    ],
)
def test_config_errors_name_the_key(options, key):
    with pytest.raises(ConfigError, match=key):
        PTuningConfig(**options)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_prompt_shape_and_encoder_runs_once(make_model, backbones, toy_dataset, name, encoder):
    backbone = backbones[name]
    model = make_model(backbone, "p-tuning", n_tokens=3, hidden=16, encoder=encoder)
    prompt = model.method()
    assert prompt.kv is None and prompt.embeds.shape == (3, backbone.spec.hidden_size)
    calls = []
    model.method.encoder.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    model(model.collate(toy_dataset.train[:8]))
    assert calls == [torch.Size([1, 3, backbone.spec.hidden_size])]


def test_init_is_seeded_and_leaves_the_global_rng_alone(make_model, llama):
    state = torch.random.get_rng_state()
    a = make_model(llama, "p-tuning", n_tokens=3, hidden=16, encoder="lstm", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = make_model(llama, "p-tuning", n_tokens=3, hidden=16, encoder="lstm", seed=3)
    c = make_model(llama, "p-tuning", n_tokens=3, hidden=16, encoder="lstm", seed=4)
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value)
    assert not torch.equal(a.method.encoder.head[0].weight, c.method.encoder.head[0].weight)


@pytest.mark.parametrize("name", NAMES)
def test_scores_equal_a_soft_prompt_of_the_encoder_output(make_model, backbones, toy_dataset, name):
    """The encoder output takes the soft-prompt path: after BOS on decoders, after [CLS]
    on encoders; nothing else differs."""
    backbone = backbones[name]
    ours = make_model(backbone, "p-tuning", n_tokens=3, hidden=16)
    soft = make_model(backbone, "soft-prompt", n_tokens=3)
    soft.load_state_dict({**ours.task.state_dict(prefix="task.")}, strict=False)
    with torch.no_grad():
        soft.method.embeddings.copy_(ours.method().embeds)
        batch = ours.collate(toy_dataset.test)
        torch.testing.assert_close(ours(batch).scores, soft(batch).scores, atol=1e-6, rtol=0)


def test_lstm_save_load_round_trip(make_model, bert, toy_dataset, tmp_path):
    model = make_model(bert, "p-tuning", n_tokens=3, hidden=16, encoder="lstm")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    loaded = PromptModel.load(model.save(tmp_path / "p.safetensors"), bert)
    assert loaded.method.config == model.method.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    batch = model.collate(toy_dataset.test)
    with torch.no_grad():
        assert torch.equal(loaded(batch).scores, model(batch).scores)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_bert"])
@pytest.mark.parametrize("encoder", ENCODERS)
def test_a_few_steps_reduce_the_training_loss(make_model, backbones, toy_dataset, name, encoder):
    model = make_model(backbones[name], "p-tuning", n_tokens=4, hidden=32, encoder=encoder)
    batch = model.collate(toy_dataset.train)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=3e-2)
    first = None
    for _ in range(8):
        loss = model(batch).loss
        first = loss.item() if first is None else first
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        final = model(batch).loss.item()
    # a random 2-layer llama moves its label-word scores only a little: ~0.004 of ~0.69
    assert final < first - 2e-3, (first, final)


def test_resume_equals_uninterrupted(make_model, llama, toy_dataset, fast_config, tmp_path):
    """Embeddings and encoder are all saved, so an interrupted run resumes exactly."""
    config = fast_config(steps=4, eval_every=2)
    options = {"n_tokens": 3, "hidden": 16, "encoder": "lstm"}
    straight = make_model(llama, "p-tuning", **options)
    train(straight, toy_dataset, config, tmp_path / "a", progress=False)
    first = make_model(llama, "p-tuning", **options)
    train(first, toy_dataset, config, tmp_path / "b", progress=False, stop_after=2)
    second = make_model(llama, "p-tuning", **options)
    train(second, toy_dataset, config, tmp_path / "b", progress=False, resume=True)
    for key, value in straight.state_dict().items():
        assert torch.equal(second.state_dict()[key], value), key
