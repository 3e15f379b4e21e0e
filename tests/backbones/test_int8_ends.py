"""The int8 ends of the model (issue 19): under `--quantize int8` the input embedding table
and the LM head are per-row int8 too (one copy when tied), read a row or a block at a time.

Each int8 backbone is compared with the float model whose every quantized weight is
replaced by its dequantized values: lookups equal exactly, the head within the frozen
int8 Linear's own tolerance (tests/backbones/test_frozen_int8.py: 1e-5 in float32,
1e-2 in bf16: a matmul's summation order), and what every method reads from the table
(init from vocab/text/labels, P-tuning, DART's label rows, nearest-token projection)
equals the dequantized model's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from largest_tensor import LargestFloatTensor  # tests/backbones/largest_tensor.py

import softprompt.backbones._frozen_int8 as frozen
import softprompt.backbones._precision as precision
from softprompt.backbones import load_backbone
from softprompt.backbones.tiny import tiny_causal
from softprompt.inject import embedding_table
from softprompt.inject.head import LMHead, embed_tokens
from softprompt.model import PromptModel
from softprompt.search.bridge import project

needs_torchao = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None,
    reason="torchao absent (optional, for --quantize int8: pip install torchao)",
)
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # the frozen int8 Linear's
FAMILIES = ["llama", "qwen2", "gemma3"]  # tied; untied head; embeddings scaled by sqrt(d)


def _pair(family: str, dtype: torch.dtype = torch.float32):
    """(int8 backbone, the float backbone holding its dequantized weights), same seed."""
    small, dense = tiny_causal(family), tiny_causal(family)
    for backbone in (small, dense):
        backbone.model.to(dtype)
    precision.quantize_model(small.model, "int8", torch.device("cpu"))
    small.quantize = "int8"
    quantized = dict(small.model.named_modules())
    with torch.no_grad():
        for name, module in dense.model.named_modules():
            weight = getattr(quantized[name], "weight", None)
            if hasattr(weight, "qdata"):
                module.weight.copy_(weight.dequantize(dtype))
    return small, dense


@needs_torchao
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_embedding_table_and_head_hold_int8(family, llama_folder):
    """Before: both stayed in --dtype (0.9 GB of the 1.5B's 2.1 GB int8 + bf16 weights)."""
    backbones = [_pair(family)[0]]
    if family == "llama":  # and through quantize-on-load from a folder
        backbones.append(load_backbone(str(llama_folder), quantize="int8"))
    for small in backbones:
        table, head = small.input_embeddings(), small.model.get_output_embeddings()
        assert isinstance(table, frozen.FrozenInt8Embedding)
        assert isinstance(head, frozen.FrozenQuantizedLinear)
        for weight in (table.weight, head.weight):
            assert weight.qdata.dtype == torch.int8 and weight.scale.shape == (weight.shape[0], 1)
        tied = small.model.config.tie_word_embeddings
        assert (head.weight is table.weight) == tied  # one int8 copy serves both
        assert small.dtype == torch.float32  # the dtype it computes in, as before
        assert small.spec.vocab_size == table.weight.shape[0]


@needs_torchao
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lookups_and_logits_equal_the_dequantized_float_model(family, dtype):
    small, dense = _pair(family, dtype)
    ids = torch.tensor([[3, 9, 14, 20, 7]])  # (1, 5)
    with torch.no_grad():
        assert torch.equal(embed_tokens(small, ids), embed_tokens(dense, ids))  # scaling kept
        hidden = torch.randn(2, 5, small.spec.hidden_size, dtype=dtype)
        got, want = LMHead(small)(hidden), LMHead(dense)(hidden)  # (2, 5, V) float32
        tol = TOLERANCE[dtype]
        assert torch.allclose(got, want, atol=tol, rtol=tol)
        words = torch.tensor([4, 11])
        assert torch.equal(LMHead(small)(hidden, words), LMHead(dense)(hidden, words))
        logits = [b.model(input_ids=ids).logits.float() for b in (small, dense)]  # (1, 5, V)
    scale = 1.0 + float(logits[1].abs().max())
    assert float((logits[0] - logits[1]).abs().max()) <= 8 * tol * scale


@needs_torchao
def test_a_lookup_expands_only_the_rows_asked_for(monkeypatch):
    """torchao's own embedding op dequantizes the whole table for every lookup (0.9 GB
    in float32 on the 1.5B); ours expands the looked-up rows only."""
    small, _ = _pair("qwen2")
    table = small.input_embeddings()
    whole = []
    kind = type(table.weight)
    real = kind.dequantize
    monkeypatch.setattr(kind, "dequantize", lambda w, *a, **k: whole.append(1) or real(w, *a, **k))
    ids = torch.tensor([[3, 9, 14]])
    with LargestFloatTensor() as seen:
        rows = table(ids)  # (1, 3, d)
    assert 0 < seen.largest <= 3 * small.spec.hidden_size and not whole
    table.__class__ = torch.nn.Embedding  # torchao's own lookup, for contrast: can fail
    assert torch.equal(table(ids), rows) and whole


@needs_torchao
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_products_with_the_whole_table_run_block_by_block(family, monkeypatch):
    """A HotFlip/AutoPrompt gradient against the vocabulary and nearest-token projection
    read the table a block at a time: no float copy of it, same values."""
    small, dense = _pair(family)
    monkeypatch.setattr(frozen, "CHUNK", 256)  # several blocks of 8 rows
    grad = torch.randn(2, small.spec.hidden_size)  # (2, d)
    with LargestFloatTensor() as seen:
        scores = embedding_table(small).scores(grad)  # (2, V)
    want = grad @ dense.input_embeddings().weight.T
    assert torch.allclose(scores, want, atol=1e-5, rtol=1e-5)
    assert seen.largest < small.input_embeddings().weight.numel()
    rows = embedding_table(small).rows([5, 6])
    assert torch.equal(rows, dense.input_embeddings().weight[[5, 6]])


def _methods() -> list[tuple[str, dict]]:
    return [
        ("soft-prompt", {"init": "vocab"}),
        ("soft-prompt", {"init": "text", "init_text": "a review of a movie"}),
        ("soft-prompt", {"init": "labels"}),
        ("p-tuning", {}),
        ("dart", {}),
    ]


@needs_torchao
@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize(("method", "options"), _methods())
def test_every_method_reads_the_int8_table_as_the_dequantized_one(
    family, method, options, make_model, toy_dataset
):
    """Init from vocab/text/labels, P-tuning, DART's label rows: the same starting prompt
    and the same prompt gradients on the int8 backbone as on its dequantized float one."""
    small, dense = _pair(family)
    if method == "soft-prompt":
        options = {"n_tokens": 4, **options}
    grads = []
    for backbone in (small, dense):
        torch.manual_seed(0)
        model = make_model(backbone, method, **options)
        model(model.collate(toy_dataset.train[:4])).loss.backward()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        grads.append((state, [p.grad.clone() for p in model.trainable_parameters()]))
    (state, got), (want_state, want) = grads
    assert state.keys() == want_state.keys()
    assert all(torch.equal(state[k], want_state[k]) for k in state)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == torch.float32 and float(a.abs().sum()) > 0
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


@needs_torchao
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_projection_on_int8_picks_the_dequantized_tables_tokens(metric, make_model):
    small, dense = _pair("qwen2")
    soft = make_model(dense, "soft-prompt", n_tokens=4)
    on_small = PromptModel(small, soft.task.config, method="soft-prompt",
                           method_options={"n_tokens": 4})  # fmt: skip
    on_small.load_tensors(soft.state_dict(), source="test")
    got, want = project(on_small, metric), project(soft, metric)
    assert got.ids == want.ids
    assert got.similarity == pytest.approx(want.similarity, abs=1e-6)


@needs_torchao
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prompt_files_move_between_int8_ends_and_the_full_backbone(
    llama_folder, make_model, tmp_path, dtype
):
    """The fingerprint still names the source weights with the ends in int8."""
    small = load_backbone(str(llama_folder), dtype=dtype, quantize="int8")
    full = load_backbone(str(llama_folder))
    assert small.fingerprint == full.fingerprint
    trained = make_model(small, init="text", init_text="good movie")
    path = trained.save(tmp_path / "int8.safetensors")
    back = PromptModel.load(path, full)
    got, want = back.state_dict(), trained.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    again = PromptModel.load(make_model(full).save(tmp_path / "full.safetensors"), small)
    assert again.backbone is small


@needs_torchao
def test_the_ends_are_quantized_as_they_load_never_read_whole(llama_folder, llama, monkeypatch):
    """Loading read the table (and an untied head) whole in --dtype and quantized it after:
    on the 1.5B 0.9 GB of bf16 next to the int8 layers, the load's peak. Now its rows are
    read, hashed and quantized a block at a time; the fingerprint is unchanged."""
    import softprompt.backbones._stream as stream

    whole = []
    real = stream._Entry.read
    monkeypatch.setattr(stream._Entry, "read", lambda e, *a: whole.append(e.shape) or real(e, *a))
    monkeypatch.setattr(stream, "ROW_VALUES", 100)  # several blocks
    small = load_backbone(str(llama_folder), quantize="int8")
    table = tuple(llama.input_embeddings().weight.shape)
    assert whole and table not in whole
    assert small.fingerprint == llama.fingerprint
    want = precision.int8_weight(llama.input_embeddings().weight.detach()).dequantize()
    assert torch.equal(small.input_embeddings().weight.dequantize(), want)


_HEAP_SCRIPT = """
import json, sys
import torch
from softprompt.backbones import load_backbone

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

load_backbone(sys.argv[1], quantize=sys.argv[2] if sys.argv[2] != "none" else None)
big = torch.ones(4 << 20)  # 16 MiB, mapped; a dynamic threshold rises to it when freed
del big
before = rss()
held = [torch.ones(1 << 18) for _ in range(16)]  # 1 MiB each, as a step's activations
del held[:-1]  # all but the newest freed
print(json.dumps({"kept": rss() - before}))
"""


@pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="resident memory is read from Linux's /proc"
)
@needs_torchao
def test_an_int8_process_gives_freed_tensors_back(llama_folder):
    """On the 1.5B a training step in int8 + bf16 left ~0.4 GB more resident after each
    of its first steps: freed mid-size blocks raise glibc's mmap threshold, and the next
    step's tensors come from a heap that is not given back. An int8 load fixes the
    threshold, so freed tensors go back to the system; a float load leaves it dynamic."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    kept = {}
    for quantize in ("int8", "none"):
        done = subprocess.run(
            [sys.executable, "-c", _HEAP_SCRIPT, str(llama_folder), quantize],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        kept[quantize] = json.loads(done.stdout.strip().splitlines()[-1])["kept"]
    assert kept["int8"] < 4 * 2**20 < 8 * 2**20 < kept["none"], kept
