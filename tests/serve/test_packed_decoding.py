"""Generation with the contexts packed end to end (inject.decode.decode_packed) gives the
tokens of the padded loop and of each request alone: greedy, seeded sampling, streaming."""

from __future__ import annotations

import pytest

import softprompt.inject.decode as decode_module
from softprompt.serve.engine import Engine
from softprompt.serve.sampling import Sampling
from softprompt.serve.store import PromptStore

GENERATORS = {  # task -> (method, seed): prompt prefixes of different widths
    "soft": ("soft-prompt", 11),
    "prefix": ("prefix-tuning", 12),
    "plain": ("none", 0),
}
TEXTS = ["good", "the film was really boring and sad and dull", "bad plot", "i loved it so"]


@pytest.fixture(scope="module")
def generation_files(llama, trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("generators")
    return {
        task: trained(llama, method, seed, kind="generation", max_new_tokens=6).save(
            folder / f"{task}.safetensors"
        )
        for task, (method, seed) in GENERATORS.items()
    }


def _engine(llama, tmp_path, files, pack: int | None) -> Engine:
    store = PromptStore(tmp_path / f"store-{pack}")
    for task, path in files.items():
        store.add(task, path)
    engine = Engine(llama, store, pack_tokens=pack)
    engine.load_all()
    return engine


def _requests(engine: Engine, sampled: bool, streams: dict | None = None):
    tasks = ["soft", "prefix", "plain", "soft", "prefix", "plain", "soft"]
    out = []
    for i, task in enumerate(tasks):
        sampling = Sampling(temperature=0.9, top_k=20, seed=i) if sampled else Sampling()
        on_token = None if streams is None else streams.setdefault(i, []).append
        out.append(
            engine.request(
                task,
                TEXTS[i % len(TEXTS)],
                generate=True,
                max_tokens=3 + i % 4,
                sampling=sampling,
                on_token=on_token,
            )
        )
    return out


@pytest.mark.parametrize("sampled", [False, True])
def test_packed_generation_equals_padded_and_alone(
    llama, tmp_path, generation_files, monkeypatch, sampled
):
    monkeypatch.setattr(decode_module, "worth_packing", lambda *args: True)  # pack always
    packed_calls = []
    run = decode_module.run_packed
    monkeypatch.setattr(
        decode_module, "run_packed", lambda *a, **k: packed_calls.append(a[2]) or run(*a, **k)
    )
    answers, streams = {}, {}
    for pack in (None, 8, 1000):
        engine = _engine(llama, tmp_path, generation_files, pack)
        answers[pack] = engine.run(_requests(engine, sampled, streams.setdefault(pack, {})))
    several, one_row = packed_calls  # rows of 8 tokens hold several requests; then one row
    assert 1 < len(several) < 7 and len(one_row) == 1
    engine = _engine(llama, tmp_path, generation_files, None)
    alone = [engine.run([r])[0] for r in _requests(engine, sampled)]
    for padded, small, wide, single in zip(*answers.values(), alone, strict=True):
        for got in (small, wide, single):
            assert (got["text"], got["tokens"], got["finish_reason"]) == (
                padded["text"],
                padded["tokens"],
                padded["finish_reason"],
            )
    assert streams[8] == streams[None] == streams[1000]  # the same pieces streamed


def test_packing_declined_decodes_padded(llama, tmp_path, generation_files, monkeypatch):
    monkeypatch.setattr(decode_module, "worth_packing", lambda *args: False)
    called = []
    monkeypatch.setattr(decode_module, "run_packed", lambda *a, **k: called.append(1))
    engine = _engine(llama, tmp_path, generation_files, 8)
    assert all(r["tokens"] for r in engine.run(_requests(engine, False)))
    assert not called


def test_the_engine_runs_on_packed_weights_unless_told_not_to(
    llama, tmp_path, generation_files, monkeypatch
):
    """Engine calls run the frozen layers on oneDNN-packed weights (inject/fast_linear.py),
    with the same text as the engine on plain weights; `pack_weights=False` never packs."""
    from softprompt.inject import fast_linear

    if not fast_linear.available():
        pytest.skip("torch without oneDNN")
    packed = []
    pack = fast_linear._pack
    monkeypatch.setattr(fast_linear, "_pack", lambda w: packed.append(w) or pack(w))
    texts = {}
    for flag in (False, True):
        store = PromptStore(tmp_path / f"store-{flag}")
        for task, path in generation_files.items():
            store.add(task, path)
        engine = Engine(llama, store, pack_weights=flag)
        engine.load_all()
        before = len(packed)
        texts[flag] = [r["text"] for r in engine.run(_requests(engine, False))]
        assert (len(packed) > before) == flag
    assert texts[True] == texts[False]
