"""inject/ is the one door to the frozen model: its protocols name every injector member
code outside it uses, each injector kind has what its protocol names, and the one
decoding loop reproduces the model's own forward."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from transformers.cache_utils import DynamicLayer

import softprompt
import softprompt.inject.decode as decode_module
from softprompt.backbones.tiny_vision import tiny_vit
from softprompt.inject import (
    CausalInjector,
    DecoderInjector,
    EncoderDecoderInjector,
    EncoderInjector,
    ImageInjector,
    Injector,
    Prompt,
    RowPrompts,
    Seq2SeqInjector,
    TextInjector,
    make_injector,
)
from softprompt.inject.decode import decode, decode_packed
from softprompt.inject.vision import VisionInjector

ROOT = Path(softprompt.__file__).parent
PROTOCOLS = (Injector, TextInjector, DecoderInjector, EncoderDecoderInjector, ImageInjector)


def protocol_members(*protocols: type) -> set[str]:
    """Names a protocol class body declares (methods, properties, annotated attributes)."""
    names = set()
    for protocol in protocols:
        for cls in protocol.__mro__:
            if cls in PROTOCOLS:
                names |= {n for n in vars(cls) if not n.startswith("_")}
                names |= set(getattr(cls, "__annotations__", {}))
    return names


def used_outside_inject() -> dict[str, str]:
    """member -> a module using it, for every `injector.<member>` / `x.injector.<member>`."""
    used = {}
    for path in sorted(ROOT.rglob("*.py")):
        if path.parent.name == "inject":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name == "injector":
                used.setdefault(node.attr, str(path.relative_to(ROOT)))
    return used


def test_the_protocols_name_every_member_callers_use():
    used = used_outside_inject()
    assert {"hidden_states", "embed", "logits", "run_core"} <= set(used)  # the scan works
    missing = {m: where for m, where in used.items() if m not in protocol_members(*PROTOCOLS)}
    assert not missing, f"add these to the Injector protocols (inject/prompt.py): {missing}"


@pytest.mark.parametrize(
    ("kind", "protocol"),
    [
        (CausalInjector, DecoderInjector),
        (EncoderInjector, TextInjector),
        (Seq2SeqInjector, EncoderDecoderInjector),
    ],
)
def test_each_injector_has_what_its_protocol_names(backbones, kind, protocol):
    names = {CausalInjector: "tiny_llama", EncoderInjector: "tiny_bert"}
    name = names.get(kind, "tiny_t5")
    injector = make_injector(backbones[name])
    assert isinstance(injector, kind)
    missing = sorted(m for m in protocol_members(protocol) if not hasattr(injector, m))
    assert not missing, f"{kind.__name__} lacks {missing}"


def test_the_image_injector_has_what_its_protocol_names():
    injector = make_injector(tiny_vit())
    assert isinstance(injector, VisionInjector)
    missing = sorted(m for m in protocol_members(ImageInjector) if not hasattr(injector, m))
    assert not missing, f"VisionInjector lacks {missing}"


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_the_decode_loop_without_a_prompt_is_the_models_own_greedy(backbones, name):
    """`decode(prompts=None)` (the optimizer LM's path) picks the tokens the whole
    model's forward picks, step by step, and stops at a stop id without keeping it."""
    backbone = backbones[name]
    injector = make_injector(backbone)
    context = [5, 9, 14, 7]
    (row,) = decode(injector, None, [context], pad_id=0, max_new_tokens=[6])
    ids = list(context)
    with torch.no_grad():
        for _ in range(6):
            logits = backbone.model(input_ids=torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    assert row.tokens == ids[len(context) :] and row.reason == "length"
    k = next((k for k in range(1, 6) if row.tokens[k] not in row.tokens[:k]), 0)  # a new id
    (stopped,) = decode(
        injector, None, [context], pad_id=0, max_new_tokens=[6], stop_ids={row.tokens[k]}
    )
    assert stopped.tokens == row.tokens[:k] and stopped.reason == "stop"


def test_the_decode_loop_stops_where_the_callback_says(llama):
    injector = make_injector(llama)
    seen = []

    def on_token(i, tokens, logits):
        seen.append((i, list(tokens), tuple(logits.shape)))
        return len(tokens) == 2

    rows = decode(injector, None, [[5, 6], [7]], pad_id=0, max_new_tokens=[4, 1], on_token=on_token)
    assert [len(r.tokens) for r in rows] == [2, 1]
    assert [r.reason for r in rows] == ["stop", "length"]
    assert seen[0] == (0, rows[0].tokens[:1], (llama.spec.vocab_size,))


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_packed_decoding_gives_the_padded_loops_tokens(backbones, name):
    """Contexts packed end to end (several to a row, prompts of different widths, one
    with none) then decoded from gathered per-row caches: the padded loop's tokens."""
    injector = make_injector(backbones[name])
    d = backbones[name].spec.hidden_size
    generator = torch.Generator().manual_seed(0)
    prompts = [Prompt(embeds=torch.randn(n, d, generator=generator)) for n in (3, 1)] + [Prompt()]
    cached = [injector._run_group([p]) for p in prompts]  # (K/V, width) per prompt
    contexts = [[5, 9, 14, 7, 8], [6], [11, 12, 13], [7, 7], [20, 21, 22, 23]]
    choice = [0, 1, 2, 0, 1]
    limits = [4, 2, 3, 5, 1]
    padded = decode(
        injector, RowPrompts.per_row(prompts, choice), contexts, pad_id=0, max_new_tokens=limits
    )
    for capacity in (6, 100):
        packed = decode_packed(
            injector, cached, choice, contexts, capacity=capacity, pad_id=0, max_new_tokens=limits
        )
        assert packed is not None, "packing declined"
        assert [r.tokens for r in packed] == [r.tokens for r in padded]


@pytest.mark.parametrize("packed", [False, True])
def test_finished_rows_leave_the_batch_with_the_same_tokens(llama, monkeypatch, packed):
    """A row that is done (its limit, or a stop) leaves before the next step, so later
    steps run only the rows still going; every row's tokens equal its own run alone."""
    injector = make_injector(llama)
    generator = torch.Generator().manual_seed(3)
    prompts = [
        Prompt(embeds=torch.randn(n, llama.spec.hidden_size, generator=generator)) for n in (2, 4)
    ]
    cached = [injector._run_group([p]) for p in prompts]
    contexts, choice, limits = [[5, 9, 14], [6, 7], [11, 12, 13, 3]], [0, 1, 0], [1, 4, 2]

    def run(rows: list[int]):
        if packed:
            return decode_packed(
                injector, cached, [choice[i] for i in rows], [contexts[i] for i in rows],
                capacity=100, pad_id=0, max_new_tokens=[limits[i] for i in rows],
            )  # fmt: skip
        per_row = RowPrompts.per_row(prompts, [choice[i] for i in rows])
        return decode(
            injector, per_row, [contexts[i] for i in rows], pad_id=0,
            max_new_tokens=[limits[i] for i in rows],
        )  # fmt: skip

    monkeypatch.setattr(decode_module, "worth_packing", lambda *args: True)
    sizes, step = [], injector.step
    monkeypatch.setattr(
        injector, "step", lambda ids, *a, **k: sizes.append(ids.shape) or step(ids, *a, **k)
    )
    together = run([0, 1, 2])
    assert [s[0] for s in sizes if s[1] == 1] == [2, 1, 1]  # 3 rows, then 2, then 1
    assert [len(r.tokens) for r in together] == limits
    for i, row in enumerate(together):
        assert row.tokens == run([i])[0].tokens


def test_decoding_writes_the_cache_in_place(llama, monkeypatch):
    """After the prefill, each step writes its token's keys and values into room kept in
    the cache (`_Slots`), never concatenating a fresh tensor per layer, past `ROOM` too."""
    monkeypatch.setattr(decode_module._Slots, "ROOM", 3)  # grows twice in 8 steps
    injector = make_injector(llama)
    contexts, limits = [[5, 9, 14, 7], [6, 2]], [8, 5]
    want = [
        decode(injector, None, [c], pad_id=0, max_new_tokens=[n])[0].tokens
        for c, n in zip(contexts, limits, strict=True)
    ]
    kinds, step = [], injector.step
    monkeypatch.setattr(
        injector,
        "step",
        lambda ids, mask, pos, cache, *a: (
            kinds.append({type(x) for x in cache.layers}) or step(ids, mask, pos, cache, *a)
        ),
    )
    rows = decode(injector, None, contexts, pad_id=0, max_new_tokens=limits)
    assert [r.tokens for r in rows] == want
    assert kinds[0] == {DynamicLayer}  # the prefill
    assert all(k == {decode_module._Slots} for k in kinds[1:]) and len(kinds) == 8
