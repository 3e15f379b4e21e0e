"""Mixed visual prompts in one batch, and the [CLS]-only last layer.

Each row of a batch that mixes k distinct prompts (shallow, deep, both, of different
lengths, or none) must get exactly the states and the prompt gradients it gets run
alone with its own prompt; the [CLS]-only last layer must equal the full forward's [CLS].
"""

from __future__ import annotations

import pytest
import torch

from softprompt.backbones.tiny_vision import tiny_dinov2, tiny_vit
from softprompt.errors import ConfigError
from softprompt.inject.prompt import RowPrompts
from softprompt.inject.vision import VisionInjector, VisionPrompt, _stack_prompts

BUILDERS = {"dinov2": tiny_dinov2, "vit": tiny_vit}
CHOICE = [0, 1, 2, 3, 1, 0, 2]  # row -> prompt


def _injector(arch: str) -> VisionInjector:
    backbone = BUILDERS[arch]()
    backbone.model.double()
    return VisionInjector(backbone)


def _prompts(injector: VisionInjector) -> list[VisionPrompt]:
    """Shallow only, shallow + deep, deep only (other lengths), and no prompt at all."""
    layers, d = len(injector.layers), injector.backbone.spec.hidden_size
    g = torch.Generator().manual_seed(3)

    def t(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)

    return [
        VisionPrompt(embeds=t(1, 2, d)),
        VisionPrompt(embeds=t(1, 4, d), deep=t(layers, 1, 3, d)),
        VisionPrompt(deep=t(layers, 1, 5, d)),
        VisionPrompt(),
    ]


def _tensors(prompts: list[VisionPrompt]) -> list[torch.Tensor]:
    return [t for p in prompts for t in (p.embeds, p.deep) if t is not None]


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_each_row_equals_that_row_alone_with_its_prompt(arch):
    injector = _injector(arch)
    prompts = _prompts(injector)
    torch.manual_seed(0)
    pixels = torch.randn(len(CHOICE), 3, 16, 16, dtype=torch.float64)
    weights = torch.randn(len(CHOICE), 17, injector.backbone.spec.hidden_size, dtype=torch.float64)

    mixed = injector.image_states(RowPrompts.per_row(prompts, CHOICE), pixels)  # (B, 17, d)
    (mixed * weights).sum().backward()
    mixed_grads = [t.grad.clone() for t in _tensors(prompts)]
    for t in _tensors(prompts):
        t.grad = None

    alone = []
    for row, j in enumerate(CHOICE):
        states = injector.image_states(prompts[j], pixels[row : row + 1])  # (1, 17, d)
        if states.requires_grad:  # the row without a prompt has nothing to train
            (states * weights[row : row + 1]).sum().backward()
        alone.append(states)
    torch.testing.assert_close(mixed, torch.cat(alone), rtol=1e-10, atol=1e-10)
    for got, t in zip(mixed_grads, _tensors(prompts), strict=True):
        torch.testing.assert_close(got, t.grad, rtol=1e-9, atol=1e-10)
        assert got.abs().max() > 0
    # the prompts matter: rows with different prompts but the same image differ
    same = injector.image_states(
        RowPrompts.per_row(prompts, [0, 1, 2, 3]), pixels[:1].expand(4, -1, -1, -1)
    )
    assert min((same[i] - same[j]).abs().max() for i in range(4) for j in range(i)) > 1e-3


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_equal_lengths_build_no_mask_and_still_match(arch):
    injector = _injector(arch)
    layers, d = len(injector.layers), injector.backbone.spec.hidden_size
    torch.manual_seed(1)
    prompts = [
        VisionPrompt(
            embeds=torch.randn(1, 3, d, dtype=torch.float64),
            deep=torch.randn(layers, 1, 2, d, dtype=torch.float64),
        )
        for _ in range(2)
    ]
    rows = RowPrompts.per_row(prompts, [1, 0, 1])
    stack = _stack_prompts(rows, 3)
    assert stack.key_mask(injector.front, 16) is None  # fused SDPA, no mask at all
    pixels = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    mixed = injector.image_states(rows, pixels)
    alone = torch.cat(
        [injector.image_states(prompts[j], pixels[i : i + 1]) for i, j in enumerate([1, 0, 1])]
    )
    torch.testing.assert_close(mixed, alone, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", list(BUILDERS))
@pytest.mark.parametrize("which", ["none", "shallow", "deep", "mixed"])
def test_front_only_last_layer_equals_the_full_forwards_cls(arch, which):
    injector = _injector(arch)
    prompts = _prompts(injector)
    torch.manual_seed(2)
    pixels = torch.randn(len(CHOICE), 3, 16, 16, dtype=torch.float64)
    prompt = {
        "none": VisionPrompt(),
        "shallow": prompts[0],
        "deep": prompts[2],
        "mixed": RowPrompts.per_row(prompts, CHOICE),
    }[which]
    with torch.no_grad():
        full = injector.image_states(prompt, pixels)  # (B, 17, d)
        front = injector.image_states(prompt, pixels, front_only=True)  # (B, 1, d)
    assert front.shape == (len(CHOICE), injector.front, full.shape[-1])
    torch.testing.assert_close(front, full[:, : injector.front], rtol=1e-10, atol=1e-10)


def test_per_row_tensors_inside_a_mixed_batch_are_refused():
    injector = _injector("dinov2")
    d = injector.backbone.spec.hidden_size
    prompts = [VisionPrompt(embeds=torch.randn(2, 3, d, dtype=torch.float64)), VisionPrompt()]
    with pytest.raises(ConfigError, match="prompt 0 of a mixed batch"):
        injector.image_states(
            RowPrompts.per_row(prompts, [0, 1]), torch.randn(2, 3, 16, 16, dtype=torch.float64)
        )
