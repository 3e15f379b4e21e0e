"""The serving engine: cached prompt K/V give what the model gives alone; the cache stays
under its bound and forgets replaced prompts; mixed batches equal each task alone."""

from __future__ import annotations

import pytest
import torch

from softprompt.inject import RowPrompts
from softprompt.inject.packing import pack_rows, worth_packing
from softprompt.inject.prompt_cache import PromptKVCache, kv_bytes
from softprompt.model import MultiTaskModel
from softprompt.serve import engine as engine_module
from softprompt.serve.engine import BadInput, Engine, RefusedTask, UnknownTask, length_groups

TEXTS = {
    "movie": ["good movie", "the film was really boring and sad"],
    "tweets": ["bad plot", "i loved it"],
    "plain": ["it was fun"],
    "story": ["the movie was", "good"],
}


def _mixed(engine: Engine) -> list:
    pairs = [(t, x) for i in range(2) for t, xs in TEXTS.items() for x in xs[i : i + 1]]
    return pairs, [engine.request(t, x, generate=None) for t, x in pairs]


def _same(a: dict, b: dict) -> None:
    if "scores" in a:
        assert a["label"] == b["label"]
        for label in a["scores"]:
            assert a["scores"][label] == pytest.approx(b["scores"][label], abs=1e-5)
    else:
        assert a["text"] == b["text"]


def test_mixed_batch_equals_each_input_alone_and_the_model(engine, prompt_files):
    pairs, requests = _mixed(engine)
    together = engine.run(requests)
    reference = MultiTaskModel({t: m for t, (_, m) in prompt_files.items()}).predict(pairs)
    for (task, text), got, want in zip(pairs, together, reference, strict=True):
        alone = engine.run([engine.request(task, text, generate=None)])[0]
        _same(got, alone)
        _same(got, want)
        assert got["task"] == task and got["version"] == 1


def test_prompts_are_computed_once_then_hit(engine, monkeypatch):
    calls = []
    original = type(engine._injector)._run_group

    def counting(self, prompts):
        calls.append(len(prompts))
        return original(self, prompts)

    monkeypatch.setattr(type(engine._injector), "_run_group", counting)
    _, requests = _mixed(engine)
    engine.run(requests)
    assert len(calls) == 4 and engine.cache.misses == 4
    engine.run(requests)
    engine.run(requests[:1])
    assert len(calls) == 4 and engine.cache.misses == 4  # no prompt ran again
    assert engine.cache.hits >= 4 + 1  # every later pass hit (length groups may add passes)


def test_cached_prefix_equals_the_injectors_own(engine):
    """The assembled per-row prefix (cache, mask, lengths) matches CausalInjector's run on
    the same prompts (each with its template head "review :" after the virtual tokens)."""
    served = [engine.tasks[t] for t in ("movie", "tweets", "plain")]
    choice = [0, 2, 1, 1, 0]
    cached = engine._injector.prefix_cache(
        RowPrompts.per_row([s.prompt for s in served], choice), len(choice)
    )
    real = RowPrompts.per_row([s.prompt.source() for s in served], choice)
    base = served[0].model.injector.prefix_cache(real, len(choice))
    torch.testing.assert_close(cached.mask, base.mask)
    torch.testing.assert_close(cached.lengths, base.lengths)
    for mine, theirs in zip(cached.cache.layers, base.cache.layers, strict=True):
        visible = base.mask.bool()[:, None, :, None]  # (B, 1, m, 1)
        torch.testing.assert_close(mine.keys * visible, theirs.keys * visible, atol=1e-6, rtol=0)
        torch.testing.assert_close(
            mine.values * visible, theirs.values * visible, atol=1e-6, rtol=0
        )


def test_template_head_rides_in_the_cached_prefix(engine):
    """ "review :" is computed once per task with the prompt; rows hold only text and tail."""
    served = engine.tasks["movie"]
    tokenizer = engine.backbone.tokenizer
    head_ids = tokenizer("review :", add_special_tokens=False)["input_ids"]
    prompt = served.prompt.source()
    assert prompt.n_embeds == 3 + len(head_ids)  # 3 virtual tokens, then the head
    row = engine.request("movie", "good", generate=False)
    tail = tokenizer(" :", add_special_tokens=False)["input_ids"]
    assert row.tokens == len(tokenizer(" good", add_special_tokens=False)["input_ids"]) + len(tail)


def test_cache_stays_under_its_bound_and_evicts_least_recent(llama, store):
    probe = Engine(llama, store)
    probe.load_all()
    probe.run([probe.request("movie", "good", generate=False)])
    one = probe.cache.nbytes  # soft prompt of 3 tokens + BOS
    engine = Engine(llama, store, cache_bytes=int(one * 2.5))
    engine.load_all()
    for task in ["movie", "plain", "movie", "story", "tweets"]:
        engine.run([engine.request(task, "good", generate=None)])
        assert engine.cache.nbytes <= engine.cache.max_bytes
    assert engine.cache.evictions >= 1
    keys = [k[0] for k in engine.cache._items]
    assert "tweets" in keys and "plain" not in keys  # least recently used went first


def test_an_entry_larger_than_the_bound_is_served_but_not_kept():
    cache = PromptKVCache(max_bytes=10)
    kv = [(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))]
    assert kv_bytes(kv) == 32  # 2 x 4 float32
    assert not cache.put(("t", 1, "x"), kv, 2)
    assert len(cache) == 0 and cache.nbytes == 0


def test_replacing_a_prompt_invalidates_its_cached_kv(engine, prompt_files, llama, trained):
    before = engine.run([engine.request("movie", "good movie", generate=False)])[0]
    old_key = engine.tasks["movie"].prompt.key
    assert old_key in engine.cache
    other = trained(llama, "soft-prompt", seed=42)
    data = other.save(prompt_files["movie"][0].parent / "movie-v2.safetensors").read_bytes()
    served = engine.install("movie", data)
    assert served.entry.version == 2 and old_key not in engine.cache
    after = engine.run([engine.request("movie", "good movie", generate=False)])[0]
    assert after["version"] == 2
    assert after["scores"] != before["scores"]
    _same(after, other.predict(["good movie"])[0])
    assert not engine.cache.put(old_key, [(torch.zeros(1), torch.zeros(1))], 1)  # retired


def test_removed_task_is_unknown_and_uncached(engine):
    engine.run([engine.request("tweets", "good", generate=False)])
    engine.remove("tweets")
    assert all(k[0] != "tweets" for k in engine.cache._items)
    with pytest.raises(UnknownTask, match="unknown task 'tweets'"):
        engine.request("tweets", "good", generate=False)


def test_prompt_of_another_backbone_is_refused(engine, gpt2, tmp_path, trained):
    data = trained(gpt2, "soft-prompt", 1).save(tmp_path / "g.safetensors").read_bytes()
    with pytest.raises(RefusedTask, match="made for backbone 'tiny-gpt2'"):
        engine.install("movie", data)
    engine.store.add("alien", tmp_path / "g.safetensors")
    engine.load_all()
    assert "alien" in engine.refused and "alien" not in engine.tasks
    with pytest.raises(RefusedTask, match="tiny-gpt2"):
        engine.request("alien", "good", generate=False)


@pytest.mark.parametrize(
    "task,text,generate,max_tokens,message",
    [
        ("movie", "", False, None, "non-empty string"),
        ("movie", 7, False, None, "non-empty string"),
        ("movie", "good " * 100, False, None, "too long"),
        ("story", "good", False, None, "send it to /generate"),
        ("movie", "good", True, None, "send it to /classify"),
        ("story", "good", True, 0, "max_tokens"),
        ("story", "good", True, 5000, "max_tokens"),
    ],
)
def test_bad_inputs_are_named_before_batching(engine, task, text, generate, max_tokens, message):
    with pytest.raises(BadInput, match=message):
        engine.request(task, text, generate=generate, max_tokens=max_tokens)


def test_generation_respects_per_row_limits(engine):
    rows = engine.run(
        [
            engine.request("story", "good", generate=True, max_tokens=1),
            engine.request("story", "good", generate=True, max_tokens=3),
        ]
    )
    assert rows[0]["tokens"] <= 1 and rows[1]["tokens"] <= 3
    assert rows[1]["text"].startswith(rows[0]["text"])


def test_encoder_backbone_serves_without_the_kv_cache(bert, tmp_path, trained):
    from softprompt.serve.store import PromptStore

    store = PromptStore(tmp_path / "s")
    models = {}
    for task, seed in [("a", 1), ("b", 2)]:
        models[task] = trained(bert, "soft-prompt", seed)
        store.add(task, models[task].save(tmp_path / f"{task}.safetensors"))
    engine = Engine(bert, store)
    engine.load_all()
    out = engine.run([engine.request(t, "good fun", generate=False) for t in ("a", "b", "a")])
    for row in out:
        _same(row, models[row["task"]].predict(["good fun"])[0])


def test_length_groups_cost_least():
    """Against brute force over every contiguous cut of the sorted rows."""
    lengths = [10, 50, 12, 11, 48, 30, 9]
    sizes = sorted(lengths)

    def cost(groups):
        return sum(max(lengths[i] for i in g) * len(g) + 16 for g in groups)

    def brute(start):
        if start == len(sizes):
            return 0
        return min(
            sizes[end - 1] * (end - start) + 16 + brute(end)
            for end in range(start + 1, len(sizes) + 1)
        )

    groups = length_groups(lengths, 16)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert cost(groups) == brute(0) and len(groups) > 1
    assert length_groups(lengths, None) == [list(range(len(lengths)))]
    assert len(length_groups(lengths, 0)) == len(set(lengths))
    assert length_groups(lengths, 10_000) == [sorted(range(7), key=lengths.__getitem__)]


def test_length_grouped_passes_equal_one_pass(llama, store):
    texts = ["good", "the film was really boring and sad and dull", "bad plot", "i loved it so"]
    answers = []
    for pass_tokens in (None, 0):
        engine = Engine(llama, store, pass_tokens=pass_tokens)
        engine.load_all()
        tasks = ["movie", "tweets", "plain", "movie"]
        answers.append(
            engine.run(
                [engine.request(t, x, generate=False) for t, x in zip(tasks, texts, strict=True)]
            )
        )
    for one, grouped in zip(*answers, strict=True):
        _same(one, grouped)


def test_pack_rows_fill_evenly_and_gather_tasks():
    lengths = [5, 3, 9, 2, 4, 12]
    rows = pack_rows(lengths, 10)  # 35 tokens: 4 rows
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert rows == [[5], [2], [0, 3], [4, 1]]  # fills 12 | 9 | 5 + 2 | 4 + 3
    # two tasks with 20 prompt slots each: each row holds one task's requests
    prompts = [0, 1, 0, 1]
    rows = pack_rows([4, 4, 4, 4], 8, prompts, [20, 20])
    assert sorted(sorted(prompts[i] for i in r) for r in rows) == [[0, 0], [1, 1]]


def test_packed_rows_equal_padded_passes(llama, store, monkeypatch):
    """Requests of three tasks (soft prompt, prefix tuning, none: prefixes of different
    widths) packed several to a row answer as padded passes and as each alone."""
    texts = ["good", "the film was really boring and sad and dull", "bad plot", "i loved it so"]
    tasks = ["movie", "tweets", "plain", "movie", "tweets", "plain"]
    pairs = [(t, texts[i % len(texts)]) for i, t in enumerate(tasks)]
    monkeypatch.setattr(engine_module, "worth_packing", lambda *args: True)  # pack always
    packed = []
    run = engine_module.packed_hidden
    monkeypatch.setattr(
        engine_module, "packed_hidden", lambda *a, **k: packed.append(a[2]) or run(*a, **k)
    )
    answers = {}
    for pack in (None, 8, 1000):
        engine = Engine(llama, store, pack_tokens=pack)
        engine.load_all()
        requests = [engine.request(t, x, generate=False) for t, x in pairs]
        assert all(engine._packable(r) for r in requests) == (pack is not None)
        answers[pack] = engine.run(requests)
    small, one_row = packed  # rows of 8 tokens hold several requests; then one row
    assert 1 < len(small) < len(pairs) and len(one_row) == 1
    alone = [engine.run([engine.request(t, x, generate=False)])[0] for t, x in pairs]
    for padded, small, one_row, single in zip(*answers.values(), alone, strict=True):
        _same(small, padded)
        _same(one_row, padded)
        _same(single, padded)


def test_packing_is_declined_when_rows_would_carry_more_prompt_slots_than_tokens():
    bins = [[0, 1], [2, 3]]  # two rows, each holding requests of two tasks
    assert worth_packing(bins, [0, 1, 0, 1], [30, 30], 64)  # 60 slots in rows of 64
    assert not worth_packing(bins, [0, 1, 0, 1], [40, 40], 64)  # 80 slots
    assert worth_packing(bins, [0, 0, 1, 1], [40, 40], 64)  # one task a row: 40


def test_declined_packing_falls_back_to_padded_passes(llama, store, monkeypatch):
    """When packing is declined the same requests go through padded passes, answered
    as each alone."""
    pairs = [("movie", "good"), ("tweets", "bad plot"), ("plain", "i loved it so")]
    engine = Engine(llama, store, pack_tokens=8)
    engine.load_all()
    monkeypatch.setattr(engine_module, "worth_packing", lambda *args: False)
    packed = []
    run = engine_module.packed_hidden
    monkeypatch.setattr(
        engine_module, "packed_hidden", lambda *a, **k: packed.append(1) or run(*a, **k)
    )
    together = engine.run([engine.request(t, x, generate=False) for t, x in pairs])
    assert not packed
    monkeypatch.undo()
    for (task, text), got in zip(pairs, together, strict=True):
        _same(got, engine.run([engine.request(task, text, generate=False)])[0])


def test_each_prompt_runs_once_per_call_even_with_the_cache_off(llama, store, monkeypatch):
    """Declined packing reads the prompts' widths, then padded passes read their K/V:
    with no cache to keep them, the call itself keeps them until it returns."""
    engine = Engine(llama, store, cache_bytes=0, pack_tokens=8)
    engine.load_all()
    monkeypatch.setattr(engine_module, "worth_packing", lambda *args: False)
    calls = []
    original = type(engine._injector)._run_group
    monkeypatch.setattr(
        type(engine._injector), "_run_group", lambda s, p: calls.append(1) or original(s, p)
    )
    pairs = [("movie", "good"), ("tweets", "bad plot"), ("movie", "i loved it so")]
    engine.run([engine.request(t, x, generate=False) for t, x in pairs])
    assert len(calls) == 2  # two tasks, once each
    engine.run([engine.request(t, x, generate=False) for t, x in pairs])
    assert len(calls) == 4  # nothing kept between calls: the cache is off


def test_removing_a_version_serves_what_the_store_then_holds(llama, gpt2, store, trained, tmp_path):
    """Removing the served version serves the newest left; when that one cannot be served
    (another backbone's), the task is refused (409), never answered by the removed one."""
    alien = trained(gpt2, "soft-prompt", 1).save(tmp_path / "alien.safetensors")
    mine = trained(llama, "soft-prompt", 77).save(tmp_path / "mine.safetensors")
    store.add("movie", alien)  # movie@2
    engine = Engine(llama, store)
    engine.load_all()
    with pytest.raises(RefusedTask, match="tiny-gpt2"):
        engine.get("movie")
    assert [e.ref for e in engine.remove("movie@2")] == ["movie@2"]
    assert engine.get("movie").entry.version == 1 and "movie" not in engine.refused
    store.add("movie", alien)
    engine.install("movie", mine.read_bytes())
    served = engine.get("movie")
    assert engine.get(served.entry.ref) is served  # task@v: the version served
    for other in ("movie@1", "movie@", f"movie@0{served.entry.version}"):
        with pytest.raises(UnknownTask, match=f"serves version {served.entry.version}"):
            engine.get(other)
    engine.remove(served.entry.ref)
    with pytest.raises(RefusedTask, match="tiny-gpt2"):
        engine.get("movie")
    assert served.prompt.key not in engine.cache
