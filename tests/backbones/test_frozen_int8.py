"""The frozen int8 Linear (backbones/_frozen_int8.py): torchao's per-row int8 arithmetic a
block of W at a time, differentiable in the input only."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from largest_tensor import LargestFloatTensor  # tests/backbones/largest_tensor.py

import softprompt.backbones._frozen_int8 as frozen
import softprompt.backbones._precision as precision
from softprompt.backbones import load_backbone

needs_torchao = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None,
    reason="torchao absent (optional, for --quantize int8: pip install torchao)",
)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU on this machine"))]  # fmt: skip


def _torchao_linear(in_features: int, out_features: int, bias: bool, dtype, device):
    """A Linear quantized by torchao itself (Int8WeightOnlyConfig), as `_int8` makes it."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(in_features, out_features, bias=bias))
    model = model.to(device=device, dtype=dtype)
    quantize_(model, Int8WeightOnlyConfig())
    return model[0]


@needs_torchao
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_blocks_give_torchao_outputs_and_the_dequantized_input_gradient(
    monkeypatch, device, dtype, bias
):
    monkeypatch.setattr(frozen, "CHUNK", 100)  # several uneven blocks each way
    layer = _torchao_linear(24, 40, bias, dtype, device)
    x = torch.randn(2, 5, 24, dtype=dtype, device=device, requires_grad=True)
    with torch.no_grad():
        want = torch.nn.functional.linear(x, layer.weight, layer.bias)  # torchao's own
    layer.__class__ = precision.FrozenQuantizedLinear
    got = layer(x)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # a matmul's summation order, no more
    assert got.dtype == dtype and torch.allclose(got, want, atol=tol, rtol=tol)
    with torch.no_grad():
        assert torch.equal(layer(x), got)
    grad = torch.randn_like(got)
    (dx,) = torch.autograd.grad(got, x, grad)
    dense = layer.weight.dequantize(dtype)  # (40, 24), what the backward used to build
    assert torch.allclose(dx.float(), (grad @ dense).float(), atol=tol, rtol=tol)


@needs_torchao
def test_no_step_expands_the_whole_int8_weight(llama_folder, monkeypatch):
    """The 1.5B's training steps spent 1.9 GB more than bf16 on int8 because every Linear
    expanded W whole (to the activations' dtype, and in the backward into float32) each
    step; now no float temporary holds more than a block of it, forwards or backwards."""
    monkeypatch.setattr(frozen, "CHUNK", 256)
    backbone = load_backbone(str(llama_folder), quantize="int8")
    layer = backbone.model.model.layers[0].mlp.up_proj  # (64, 32): 2048 weight values
    x = torch.randn(3, 32, requires_grad=True)
    with LargestFloatTensor() as seen:
        y = layer(x)
        y.backward(torch.ones_like(y))
    assert 0 < seen.largest <= 256 < layer.weight.numel()
    layer.__class__ = torch.nn.Linear  # torchao's own path, for contrast: the test can fail
    with LargestFloatTensor() as old:
        layer(x.detach())
    assert old.largest >= layer.weight.numel()


@needs_torchao
def test_prompt_gradients_equal_the_dequantized_float_model(llama_folder, make_model, toy_dataset):
    """The int8 backbone is the float model whose Linear weights are its dequantized int8
    ones: the prompt's gradients through both agree, and no backbone tensor moves."""
    small = load_backbone(str(llama_folder), quantize="int8")
    dense = load_backbone(str(llama_folder))
    quantized = dict(small.model.named_modules())
    with torch.no_grad():
        for name, module in dense.model.named_modules():
            if type(quantized[name]) is precision.FrozenQuantizedLinear:
                module.weight.copy_(quantized[name].weight.dequantize(torch.float32))
    before = [t.clone() for p in small.model.parameters() for t in _inner(p)]
    grads = []
    for backbone in (small, dense):
        torch.manual_seed(0)
        model = make_model(backbone)
        model.load_tensors(grads[0][1] if grads else model.state_dict(), source="test")
        loss = model(model.collate(toy_dataset.train[:4])).loss
        loss.backward()
        grads.append(([p.grad.clone() for p in model.trainable_parameters()], model.state_dict()))
    for got, want in zip(grads[0][0], grads[1][0], strict=True):
        assert got.dtype == torch.float32 and float(got.abs().sum()) > 0
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4)
    after = [t for p in small.model.parameters() for t in _inner(p)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def _inner(weight: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors a (possibly torchao-quantized) weight is made of."""
    if type(weight).__name__ == "Parameter":
        return [weight.detach()]
    names, _ = weight.__tensor_flatten__()
    return [getattr(weight, n) for n in names]
