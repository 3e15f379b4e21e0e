"""`--quantize nf4` (issue 19): bitsandbytes' 4-bit NF4 Linear layers, on this CPU.

The reference for the logits is the same backbone with each Linear's weight replaced by
bitsandbytes' own dequantization of the 4-bit data it holds
(`bitsandbytes.functional.dequantize_4bit`): NF4 rounding is bitsandbytes' error, and
the tests require our path to add none of its own (float tolerance: 1e-6).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from wide_llama import (  # tests/backbones/wide_llama.py
    LOAD_PEAK_SCRIPT,
    child_report,
    save_wide_llama,
)

import softprompt.backbones._nf4 as nf4
from softprompt.backbones import load_backbone
from softprompt.errors import BackboneError
from softprompt.model import PromptModel
from softprompt.promptfile import read_prompt_file

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes not installed (--quantize nf4)")

IDS = torch.tensor([[3, 9, 14, 20, 7, 11], [5, 2, 30, 8, 1, 4]])
TEXTS = ["the movie was good", "terrible and boring plot", "i loved it", "a waste of time"]


def _nf4_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def _dequantized_reference(folder, small) -> torch.nn.Module:
    """The folder loaded in `small`'s dtype without quantization, every layer that is NF4
    in `small` holding bitsandbytes' dequantization of the 4-bit data `small` holds."""
    reference = load_backbone(str(folder), dtype=small.dtype).model
    for name, layer in _nf4_layers(small.model).items():
        dense = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        reference.get_submodule(name).weight.data = dense
    for name, buffer in small.model.named_buffers():  # rotary frequencies: the streamed
        owner, _, attr = name.rpartition(".")  # load keeps them float32 under bf16
        reference.get_submodule(owner)._buffers[attr] = buffer
    return reference


def _stored(layer: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor an NF4 layer's weight is made of: packed data, scales, nested state."""
    state = layer.weight.quant_state.as_dict(packed=True)
    return [layer.weight.data.clone()] + [v.clone() for v in state.values() if torch.is_tensor(v)]


def _probabilities(model: PromptModel) -> torch.Tensor:
    return torch.tensor(
        [[p["scores"][k] for k in sorted(p["scores"])] for p in model.predict(TEXTS)]
    )


def test_nf4_on_cpu_holds_4bit_linears_with_the_source_fingerprint(llama_folder):
    full = load_backbone(str(llama_folder))
    small = load_backbone(str(llama_folder), quantize="nf4")
    assert small.quantize == "nf4" and small.fingerprint == full.fingerprint
    linears = {
        n: m
        for n, m in full.model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not full.model.get_output_embeddings()
    }
    layers = _nf4_layers(small.model)
    assert linears and layers.keys() == linears.keys()
    for name, layer in layers.items():
        weight = layer.weight
        assert weight.dtype == torch.uint8 and weight.device.type == "cpu"
        assert weight.numel() * 2 == linears[name].weight.numel()  # two 4-bit values a byte
        assert weight.quant_state.shape == linears[name].weight.shape
        assert not weight.requires_grad
    # the ends stay in --dtype (bitsandbytes quantizes Linear layers only)
    assert small.input_embeddings().weight.dtype == torch.float32
    assert type(small.model.get_output_embeddings()) is torch.nn.Linear
    assert small.output_embeddings().dtype == torch.float32


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nf4_logits_equal_bitsandbytes_dequantized_weights(llama_folder, dtype):
    """No error beyond NF4's own rounding, with and without autograd recording (the
    training path and the scoring path), and the rounding is really there."""
    full = load_backbone(str(llama_folder))
    small = load_backbone(str(llama_folder), dtype=dtype, quantize="nf4")
    reference = _dequantized_reference(llama_folder, small)
    tolerance = 1e-6  # the same products on the same weights: equal here, in bf16 too
    with torch.no_grad():
        want = reference(input_ids=IDS).logits.float()
        scored = small.model(input_ids=IDS).logits.float()
        source = full.model(input_ids=IDS).logits
    embeds = small.input_embeddings()(IDS).detach().requires_grad_(True)
    trained = small.model(inputs_embeds=embeds).logits.float()
    assert torch.allclose(scored, want, atol=tolerance, rtol=0)
    assert torch.allclose(trained, want, atol=tolerance, rtol=0)
    assert (source - want.float()).abs().max() > 1e-2  # 4-bit weights are not the source


def test_nf4_training_moves_only_the_prompt(llama_folder, make_model, toy_dataset):
    """Only prompt parameters get gradients; the 4-bit weights are bit-identical after two
    steps and a `predict` between them (scoring must not repack them in place)."""
    backbone = load_backbone(str(llama_folder), quantize="nf4")
    layers = _nf4_layers(backbone.model)
    before = {n: _stored(m) for n, m in layers.items()}
    model = make_model(backbone)
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=0.1)
    for _ in range(2):
        loss = model(model.collate(toy_dataset.train[:4])).loss
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in params)
        assert all(float(p.grad.abs().sum()) > 0 for p in params)
        assert all(p.grad is None for p in backbone.model.parameters())
        optimizer.step()
        model.predict(TEXTS[:2])
    for name, tensors in before.items():
        after = _stored(layers[name])
        assert all(torch.equal(a, b) for a, b in zip(tensors, after, strict=True)), name


def test_prompt_moves_between_nf4_and_full_backbones(llama_folder, make_model, tmp_path):
    """The fingerprint names the source weights: a prompt trained on the NF4 copy loads on
    the float32 one and the other way round; the file records the quantization."""
    small = load_backbone(str(llama_folder), quantize="nf4")
    full = load_backbone(str(llama_folder))
    path = make_model(small).save(tmp_path / "nf4.safetensors")
    meta = read_prompt_file(path)[1]["backbone"]
    assert (meta["quantize"], meta["dtype"]) == ("nf4", "float32")
    on_full = PromptModel.load(path, full)
    back = make_model(full).save(tmp_path / "full.safetensors")
    assert read_prompt_file(back)[1]["backbone"]["quantize"] == "none"
    on_small = PromptModel.load(back, small)
    assert on_full.backbone is full and on_small.backbone is small
    diff = (_probabilities(on_full) - _probabilities(PromptModel.load(path, small))).abs().max()
    assert float(diff) <= 0.1  # 4-bit weights on a random tiny model: a loose bound


def test_nf4_on_a_device_bitsandbytes_does_not_serve_is_refused(llama_folder):
    with pytest.raises(BackboneError, match="nf4 runs on cpu or cuda .*not on mps"):
        load_backbone(str(llama_folder), quantize="nf4", device="mps")


def test_nf4_without_bitsandbytes_names_the_install(llama_folder, monkeypatch):
    monkeypatch.setattr(nf4, "_installed", lambda module: False)
    with pytest.raises(BackboneError, match="install it with: pip install bitsandbytes==0.50.2"):
        load_backbone(str(llama_folder), quantize="nf4")


_QUIET_LOAD = """
import sys
asked = []
try:
    import kernels  # transformers may import it anyway; bitsandbytes must not use it

    def get_kernel(*args, **kwargs):
        asked.append(args)
        raise RuntimeError("offline")

    kernels.get_kernel = get_kernel
except ImportError:
    pass
from softprompt.backbones import load_backbone
load_backbone(sys.argv[1], quantize="nf4")
print(len(asked))
"""


def test_nf4_import_asks_the_hub_for_no_kernel_and_says_nothing(llama_folder):
    """On AVX512-BF16 CPUs (this one) bitsandbytes' import asks the Hugging Face Hub for a
    CPU kernel (`kernels.get_kernel`) and logs that it could not get it; neither happens."""
    done = subprocess.run(
        [sys.executable, "-c", _QUIET_LOAD, str(llama_folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "0"  # get_kernel never called
    assert "kernels-community" not in done.stderr and "gemm_4bit" not in done.stderr


def test_nf4_quantizes_as_it_loads_and_equals_quantizing_after(llama_folder, monkeypatch):
    """An HF folder loads tensor by tensor, each Linear quantized as it fills (no
    from_pretrained, whose memory-mapped file stayed resident): the same 4-bit data as
    loading in float and quantizing after, which stays the fallback."""
    import softprompt.backbones._hfdir as hfdir
    import softprompt.backbones._precision as precision

    after = load_backbone(str(llama_folder))
    precision.quantize_model(after.model, "nf4", torch.device("cpu"))

    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained ran: the nf4 load was not streamed")

    monkeypatch.setattr(hfdir, "_from_pretrained", refuse)
    streamed = load_backbone(str(llama_folder), quantize="nf4")
    assert streamed.fingerprint == after.fingerprint
    layers, reference = _nf4_layers(streamed.model), _nf4_layers(after.model)
    assert layers.keys() == reference.keys()
    for name, layer in layers.items():
        pairs = zip(_stored(layer), _stored(reference[name]), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs), name


def test_nf4_resident_memory_is_the_4bit_weights(tmp_path, llama_folder):
    """A 12.6M-parameter llama (48 MB in float32, almost all Linear weights): once loaded
    in nf4 the process holds at most 0.2x the float32 weights more than before (4-bit data
    and scales: 0.14x; measured 0.14x), and never grew by more than 0.5x on the way
    (measured 0.34x). Loaded whole and quantized after, it held 1.17x."""
    float_bytes = save_wide_llama(tmp_path / "m")
    grew = child_report(LOAD_PEAK_SCRIPT, str(llama_folder), str(tmp_path / "m"), "nf4")
    assert grew["held"] <= 0.2 * float_bytes, (grew, float_bytes)
    assert grew["peak"] <= 0.5 * float_bytes, (grew, float_bytes)


def test_estimate_counts_the_4bit_data_and_its_scales(llama_folder):
    """`softprompt estimate` sizes the frozen weights with `tensor_bytes`: for an NF4
    weight, the packed data plus the per-block scales it needs (it counted the data only)."""
    from softprompt.estimate import tensor_bytes

    small = load_backbone(str(llama_folder), quantize="nf4")
    for layer in _nf4_layers(small.model).values():
        state = layer.weight.quant_state
        scales = state.absmax.numel() + 4 * state.state2.absmax.numel()  # uint8 + float32
        tables = 4 * (state.code.numel() + state.state2.code.numel())  # float32 code books
        assert tensor_bytes(layer.weight) == layer.weight.numel() + scales + tables
