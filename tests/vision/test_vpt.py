"""VPT-shallow and VPT-deep on tiny random vision transformers built in code.

The central check: VPT-deep as per-layer key/value prefixes gives the same outputs
and the same prompt gradients as the paper's insert-and-discard formulation, run
through transformers' own layer modules.
"""

from __future__ import annotations

import pytest
import torch

from softprompt.api import build_model
from softprompt.backbones.tiny_vision import tiny_dinov2, tiny_vit
from softprompt.data import Dataset, Example
from softprompt.errors import ConfigError
from softprompt.inject.vision import VisionInjector, VisionPrompt, reference_deep_states
from softprompt.model import PromptModel
from softprompt.train import TrainConfig, train

BUILDERS = {"dinov2": tiny_dinov2, "vit": tiny_vit}


def _double(backbone):
    backbone.model.double()
    return backbone


@pytest.mark.parametrize("arch", list(BUILDERS))
@pytest.mark.parametrize("rows", [1, 3])  # a shared prompt, and one prompt per row
def test_deep_kv_prefix_equals_insert_and_discard(arch, rows):
    backbone = _double(BUILDERS[arch]())
    injector = VisionInjector(backbone)
    layers, n, d = backbone.spec.num_layers, 5, backbone.spec.hidden_size
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    deep = torch.randn(layers, rows, n, d, dtype=torch.float64)
    weights = torch.randn(3, 17, d, dtype=torch.float64)  # a loss that reads every state

    fast_prompt = deep.clone().requires_grad_(True)
    fast = injector.image_states(VisionPrompt(deep=fast_prompt), pixels)  # (B, 17, d)
    (fast * weights).sum().backward()
    slow_prompt = deep.clone().requires_grad_(True)
    slow = reference_deep_states(injector, slow_prompt, pixels)
    (slow * weights).sum().backward()

    assert fast.shape == slow.shape == (3, 17, d)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast_prompt.grad, slow_prompt.grad, rtol=1e-9, atol=1e-10)
    assert fast_prompt.grad.abs().min() > 0  # every prompt entry of every layer matters
    # and the prompt does something: without it the states differ
    plain = injector.image_states(VisionPrompt(), pixels)
    assert (plain - fast).abs().max() > 1e-3


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_no_prompt_is_the_backbones_own_forward(arch):
    backbone = BUILDERS[arch]()
    pixels = torch.randn(2, 3, 16, 16)
    extra = {"interpolate_pos_encoding": True} if arch == "vit" else {}
    with torch.no_grad():
        expected = backbone.model(pixel_values=pixels, **extra).last_hidden_state
        ours = VisionInjector(backbone).image_states(VisionPrompt(), pixels)
    assert torch.equal(ours, expected)


def test_shallow_prompt_shapes_and_placement(dinov2):
    injector = VisionInjector(dinov2)
    pixels = torch.randn(2, 3, 16, 16)
    model = _model(dinov2, "vpt-shallow", n_tokens=4)
    prompt = model.method()
    assert prompt.embeds.shape == (1, 4, 32) and prompt.deep is None
    states = injector.image_states(prompt, pixels)
    assert states.shape == (2, 17, 32)  # [CLS] + 16 patches; the 4 prompt states dropped
    # the same as running the encoder on [CLS, P, patches] by hand and dropping P
    x = dinov2.model.embeddings(pixels)
    x = torch.cat([x[:, :1], prompt.embeds.expand(2, -1, -1), x[:, 1:]], 1)
    for layer in dinov2.model.encoder.layer:
        x = layer(x)
    x = dinov2.model.layernorm(x)
    torch.testing.assert_close(states, torch.cat([x[:, :1], x[:, 5:]], 1))


def test_deep_prompt_shapes_and_init_bound(dinov2):
    model = _model(dinov2, "vpt-deep", n_tokens=3)
    prompt = model.method()
    assert prompt.deep.shape == (3, 1, 3, 32) and prompt.embeds is None
    bound = (6 / (3 * 4 * 4 + 32)) ** 0.5  # VPT's Xavier bound for patch 4, d 32
    assert 0.5 * bound < prompt.deep.abs().max() <= bound
    assert model.num_trainable() == 3 * 3 * 32 + 32 * 2 + 2


def test_lr_scale_keeps_the_prompt_and_scales_its_step(dinov2):
    plain = _model(dinov2, "vpt-deep", n_tokens=3)
    scaled = _model(dinov2, "vpt-deep", n_tokens=3, lr_scale=10.0)
    torch.testing.assert_close(plain.method().deep, scaled.method().deep)


def test_vpt_refuses_a_text_backbone():
    from softprompt.backbones.tiny import tiny_bert

    with pytest.raises(ConfigError, match="method.name: vpt-deep needs a vision backbone"):
        _model(tiny_bert(), "vpt-deep")


@pytest.mark.parametrize("method", ["vpt-shallow", "vpt-deep", "none"])
def test_only_prompt_and_head_train_backbone_bit_identical(method, image_dataset, tmp_path):
    backbone = tiny_dinov2()
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    model = build_model(backbone, image_dataset, {"name": method}, {"image_size": 16})
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {"task.head.weight", "task.head.bias"}
    assert names == (expected if method == "none" else expected | {"method.embeddings"})
    start = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(steps=3, batch_size=4, eval_every=3, lr=0.05, warmup_steps=0)
    train(model, image_dataset, config, tmp_path / "run", progress=False)
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for p in backbone.model.parameters())
    assert all(not torch.equal(start[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("method", ["vpt-shallow", "vpt-deep"])
def test_save_load_exact(method, image_dataset, tmp_path):
    backbone = tiny_dinov2()
    model = build_model(backbone, image_dataset, {"name": method, "n_tokens": 3}, {})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.task.config.image_size = 16
    model.task.size = 16
    path = model.save(tmp_path / "p.safetensors")
    loaded = PromptModel.load(path, backbone)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    refs = [e.text for e in image_dataset.test]
    assert model.predict(refs) == loaded.predict(refs)
    assert loaded.task.size == 16 and loaded.method.config.n_tokens == 3


def test_image_size_must_fit_the_patches(dinov2, image_dataset):
    with pytest.raises(ConfigError, match="task.image_size: 18 is not a multiple .* patch size 4"):
        build_model(dinov2, image_dataset, {"name": "vpt-deep"}, {"image_size": 18})


def test_verbalizer_head_is_refused_on_images(dinov2, image_dataset):
    with pytest.raises(ConfigError, match="task.head: a vision backbone has no label words"):
        build_model(dinov2, image_dataset, {"name": "none"}, {"head": "verbalizer"})


def _model(backbone, method: str, **options) -> PromptModel:
    data = Dataset(
        name="toy",
        task="classification",
        labels=["a", "b"],
        train=[Example("x", "a")],
        validation=[],
        test=[],
    )
    return build_model(backbone, data, {"name": method, **options}, {"image_size": 16})
