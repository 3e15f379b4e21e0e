"""Quantized frozen backbones (issue 19): int8 weight-only (torchao), NF4 (bitsandbytes;
on the CPU in tests/backbones/test_nf4.py).

Tolerance, stated once: class probabilities within 0.02 of float32 with int8 weights
(per-channel int8 keeps about 2-3 significant digits of each weight).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from wide_llama import (  # tests/backbones/wide_llama.py
    LOAD_PEAK_SCRIPT,
    child_report,
    save_wide_llama,
)

import softprompt.backbones._precision as precision
from softprompt.backbones import load_backbone
from softprompt.errors import BackboneError, ConfigError
from softprompt.model import PromptModel
from softprompt.promptfile import read_prompt_file

TOLERANCE = 0.02
TEXTS = ["the movie was good", "terrible and boring plot", "i loved it", "a waste of time"]

needs_torchao = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None,
    reason="torchao absent (optional, for --quantize int8: pip install torchao)",
)


def _probabilities(model: PromptModel) -> torch.Tensor:
    return torch.tensor(
        [[p["scores"][k] for k in sorted(p["scores"])] for p in model.predict(TEXTS)]
    )


def _linear_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


@needs_torchao
@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int8_scores_within_tolerance_and_fingerprint_of_the_source(
    request, make_model, family, dtype
):
    folder = request.getfixturevalue(f"{family}_folder")
    options = {"task": {"head": "linear"}} if family == "bert" else {}
    full = load_backbone(str(folder))
    small = load_backbone(str(folder), dtype=dtype, quantize="int8")
    assert small.quantize == "int8" and small.fingerprint == full.fingerprint
    weights = _linear_weights(small.model)
    head = small.model.get_output_embeddings()
    quantized = [n for n, w in weights.items() if type(w).__name__ != "Parameter"]
    assert quantized and len(quantized) == len(weights)  # the LM head too (issue 19)
    assert head is None or type(head.weight).__name__ == "Int8Tensor"
    assert type(small.input_embeddings().weight).__name__ == "Int8Tensor"  # rows expanded
    reference = make_model(full, **options)
    model = make_model(small, **options)
    model.load_tensors(reference.state_dict(), source="test")
    diff = (_probabilities(model) - _probabilities(reference)).abs().max()
    assert float(diff) <= TOLERANCE + (0.03 if dtype == "bfloat16" else 0.0)


@needs_torchao
def test_int8_training_keeps_prompt_float32_and_backbone_unchanged(
    llama_folder, make_model, toy_dataset
):
    backbone = load_backbone(str(llama_folder), quantize="int8")
    before = {n: [t.clone() for t in _inner(w)] for n, w in _linear_weights(backbone.model).items()}
    model = make_model(backbone)
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=0.1)
    for _ in range(2):
        loss = model(model.collate(toy_dataset.train[:4])).loss
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in params)
        assert all(float(p.grad.abs().sum()) > 0 for p in params)
        optimizer.step()
    after = {n: _inner(w) for n, w in _linear_weights(backbone.model).items()}
    for name, tensors in before.items():
        assert all(torch.equal(a, b) for a, b in zip(tensors, after[name], strict=True))


def _inner(weight: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors a (possibly torchao-quantized) weight is made of."""
    if type(weight).__name__ == "Parameter":
        return [weight.detach()]
    names, _ = weight.__tensor_flatten__()
    return [getattr(weight, n) for n in names]


@needs_torchao
def test_prompt_moves_between_int8_and_full_backbones(llama_folder, make_model, tmp_path):
    """The fingerprint names the source weights, so a prompt trained on the int8 copy loads
    on the float32 one and the other way round; the file says which it was trained on."""
    small = load_backbone(str(llama_folder), quantize="int8")
    full = load_backbone(str(llama_folder))
    path = make_model(small).save(tmp_path / "int8.safetensors")
    meta = read_prompt_file(path)[1]["backbone"]
    assert (meta["quantize"], meta["dtype"]) == ("int8", "float32")
    on_full = PromptModel.load(path, full)
    back = make_model(full).save(tmp_path / "full.safetensors")
    on_small = PromptModel.load(back, small)
    assert on_full.backbone is full and on_small.backbone is small
    diff = (_probabilities(on_full) - _probabilities(PromptModel.load(path, small))).abs().max()
    assert float(diff) <= TOLERANCE


def test_int8_without_torchao_names_the_install(llama_folder, monkeypatch):
    monkeypatch.setattr(precision, "_installed", lambda module: False)
    with pytest.raises(BackboneError, match="install it with: pip install torchao"):
        load_backbone(str(llama_folder), quantize="int8")


def test_nf4_without_cuda_runs_on_the_cpu(llama_folder, monkeypatch):
    """nf4 was refused without a CUDA GPU; bitsandbytes' 4-bit layers run on the CPU
    (tests/backbones/test_nf4.py), and only --device cuda without a GPU is refused."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes not installed (--quantize nf4)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    small = load_backbone(str(llama_folder), quantize="nf4")
    kinds = {type(m).__name__ for m in small.model.modules()}
    assert small.quantize == "nf4" and "Linear4bit" in kinds
    with pytest.raises(BackboneError, match="nf4 --device cuda: no CUDA GPU is visible"):
        load_backbone(str(llama_folder), quantize="nf4", device="cuda")


def test_unknown_quantization_names_the_key(llama_folder):
    with pytest.raises(ConfigError, match=r"backbone\.quantize: must be one of none, int8, nf4"):
        load_backbone(str(llama_folder), quantize="int4")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nf4 needs a CUDA GPU")
def test_nf4_on_cuda(llama_folder, make_model, toy_dataset):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes absent (optional, for nf4)")
    full = load_backbone(str(llama_folder))
    small = load_backbone(str(llama_folder), dtype="bfloat16", quantize="nf4", device="cuda")
    assert small.fingerprint == full.fingerprint and small.quantize == "nf4"
    model = make_model(small)
    loss = model(model.collate(toy_dataset.train[:4])).loss
    loss.backward()
    grads = [p.grad for p in model.trainable_parameters()]
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    reference = make_model(full)
    reference.load_tensors(model.state_dict(), source="test")
    diff = (_probabilities(model) - _probabilities(reference)).abs().max()
    assert float(diff) <= 0.1  # 4-bit weights: a looser bound


@needs_torchao
def test_int8_backward_keeps_no_float_copy_of_the_weights(llama_folder):
    """torchao's int8 linear casts W to float for its matmul and autograd would keep that
    copy for every layer; the frozen linear keeps none and rebuilds W in the backward."""
    backbone = load_backbone(str(llama_folder), quantize="int8")
    layer = backbone.model.model.layers[0].mlp.up_proj  # (64, 32)
    assert type(layer) is precision.FrozenQuantizedLinear
    x = torch.randn(3, 32, requires_grad=True)

    def saved_weight_copies(module: torch.nn.Module) -> tuple[int, torch.Tensor]:
        saved: list[torch.Size] = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.shape) or t, lambda t: t
        ):
            y = module(x)
        return sum(shape == (32, 64) or shape == (64, 32) for shape in saved), y

    copies, y = saved_weight_copies(layer)
    assert copies == 0
    (grad,) = torch.autograd.grad(y.sum(), x)
    dense = layer.weight.dequantize(torch.float32)  # (64, 32)
    assert torch.allclose(grad, torch.ones(3, 64) @ dense, atol=1e-5)
    layer.__class__ = torch.nn.Linear  # torchao's own path, for contrast: the test can fail
    try:
        assert saved_weight_copies(layer)[0] >= 1
    finally:
        layer.__class__ = precision.FrozenQuantizedLinear


@needs_torchao
def test_torchao_import_noise_stays_out_of_the_output():
    """transformers imports torchao whenever it builds a model once torchao is installed;
    its warnings about CUDA-only kernels (and torch's pytree ones) must not reach users."""
    import subprocess
    import sys

    code = "from softprompt.backbones.tiny import tiny_llama; tiny_llama(); print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok"
    assert "Failed to load" not in done.stderr and "register_constant" not in done.stderr


@needs_torchao
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int8_quantizes_as_it_loads_and_equals_quantizing_after(llama_folder, monkeypatch, dtype):
    """--quantize int8 on an HF folder never runs from_pretrained (which holds the whole
    float model before torchao reduces it): tensors are read one by one and each Linear
    is quantized when filled. Same weights, logits and source fingerprint as before."""
    import softprompt.backbones._hfdir as hfdir

    full = load_backbone(str(llama_folder))
    after = load_backbone(str(llama_folder), dtype=dtype)
    precision.quantize_model(after.model, "int8", torch.device("cpu"))

    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained ran: the int8 load was not streamed")

    monkeypatch.setattr(hfdir, "_from_pretrained", refuse)
    streamed = load_backbone(str(llama_folder), dtype=dtype, quantize="int8")
    assert streamed.fingerprint == full.fingerprint and streamed.model.dtype == after.model.dtype
    assert streamed.output_embeddings().data_ptr() == streamed.input_embeddings().weight.data_ptr()
    for (name, a), (_, b) in zip(
        streamed.model.named_parameters(), after.model.named_parameters(), strict=True
    ):
        dense = [w.dequantize() if hasattr(w, "dequantize") else w for w in (a, b)]
        assert torch.equal(dense[0], dense[1]), name
    ids = torch.tensor([[3, 9, 14, 20, 7]])
    with torch.no_grad():
        got, want = (m.model(input_ids=ids).logits.float() for m in (streamed, after))
    # float32: identical. bf16: the cast-after path also rounds the rotary buffer to bf16;
    # the streamed one keeps it float32, as from_pretrained does for a bf16 folder.
    assert torch.allclose(got, want, atol=0 if dtype == "float32" else 1e-2)
    kinds = {type(m).__name__ for m in streamed.model.modules()}
    assert "FrozenQuantizedLinear" in kinds


@needs_torchao
def test_int8_from_a_file_the_reader_skips_falls_back_to_quantizing_after(llama, tmp_path):
    """A folder the streaming reader leaves to from_pretrained (float64 weights here)
    still loads in int8, with the fingerprint of its (float32-exact) weights."""
    from safetensors.torch import save_file

    folder = tmp_path / "f64"
    llama.model.config.save_pretrained(folder)
    llama.tokenizer.save_pretrained(folder)
    state = {k: v.double() for k, v in llama.model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    small = load_backbone(str(folder), quantize="int8")
    assert small.fingerprint == llama.fingerprint
    assert "FrozenQuantizedLinear" in {type(m).__name__ for m in small.model.modules()}


@needs_torchao
def test_int8_load_peak_stays_well_under_the_float32_weights(tmp_path, llama_folder):
    """A 14M-parameter llama (56 MB in float32): loading it in int8 adds at most half the
    float32 weights' size to the peak resident memory; loading then quantizing held the
    whole float32 model first (and the file's mapped pages), more than its full size."""
    float_bytes = save_wide_llama(tmp_path / "m")
    grew = child_report(LOAD_PEAK_SCRIPT, str(llama_folder), str(tmp_path / "m"), "int8")["peak"]
    assert grew <= 0.5 * float_bytes, (grew, float_bytes)
