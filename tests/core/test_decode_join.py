"""Continuous batching in the decoding loop (inject/decode.py `decode_from`): rows
prefilled while others decode join at the next step, and every row's tokens equal its
own run alone, whatever its prompt width, context length or joining step."""

from __future__ import annotations

import pytest
import torch

import softprompt.inject.decode as decode_module
from softprompt.inject import Prompt, RowPrompts, make_injector
from softprompt.inject.decode import decode, decode_from, prefill, prefill_packed

CONTEXTS = [[5, 9, 14], [6, 7], [11, 12, 13, 3, 8, 2, 4, 10, 15], [1]]
CHOICE = [0, 1, 1, 0]  # prompts of 2 and 6 virtual tokens
LIMITS = [7, 5, 4, 3]
JOINS = {1: [1], 2: [2, 3]}  # after step s, these rows join


@pytest.fixture
def setup(llama):
    injector = make_injector(llama)
    generator = torch.Generator().manual_seed(5)
    prompts = [
        Prompt(embeds=torch.randn(n, llama.spec.hidden_size, generator=generator)) for n in (2, 6)
    ]
    return injector, prompts, [injector._run_group([p]) for p in prompts]


def _prefill(setup, rows: list[int], packed: bool):
    injector, prompts, cached = setup
    contexts = [CONTEXTS[i] for i in rows]
    if packed:
        choice = [CHOICE[i] for i in rows]
        return prefill_packed(injector, cached, choice, contexts, capacity=100, pad_id=0)
    return prefill(injector, RowPrompts.per_row(prompts, [CHOICE[i] for i in rows]), contexts, 0)


@pytest.mark.parametrize("packed", [False, True])
def test_rows_joining_a_running_decode_make_their_own_tokens(setup, monkeypatch, packed):
    """Row 0 decodes alone; row 1 (a wider prompt, a shorter context) joins after step 1,
    rows 2 and 3 (a longer context than the running cache; a one-token one) after step
    2. Each row's tokens equal its own decode alone; the short joiner ends first."""
    monkeypatch.setattr(decode_module, "worth_packing", lambda *args: True)
    injector, prompts, _ = setup
    steps, going_seen, done = [0], [], []

    def join(going: int):
        steps[0] += 1
        going_seen.append(going)
        rows = JOINS.get(steps[0])
        return None if rows is None else (_prefill(setup, rows, packed), [LIMITS[i] for i in rows])

    out = decode_from(
        injector,
        _prefill(setup, [0], packed),
        max_new_tokens=LIMITS[:1],
        join=join,
        on_done=lambda i, row: done.append(i),
    )
    alone = [
        decode(
            injector,
            RowPrompts.per_row(prompts, [CHOICE[i]]),
            [CONTEXTS[i]],
            pad_id=0,
            max_new_tokens=[LIMITS[i]],
        )[0].tokens
        for i in range(4)
    ]
    assert [row.tokens for row in out] == alone
    assert [len(t) for t in alone] == LIMITS
    assert going_seen[:3] == [1, 2, 4]  # rows 1, then 2 and 3 decode beside row 0
    assert done.index(3) < done.index(0) and sorted(done) == [0, 1, 2, 3]


def test_a_row_joining_with_no_tokens_to_make_is_done_at_once(setup):
    injector, _, _ = setup
    done = []
    calls = [0]

    def join(going: int):
        calls[0] += 1
        return (_prefill(setup, [1], False), [0]) if calls[0] == 1 else None

    out = decode_from(
        injector,
        _prefill(setup, [0], False),
        max_new_tokens=[3],
        join=join,
        on_done=lambda i, row: done.append(i),
    )
    assert [len(r.tokens) for r in out] == [3, 0] and done == [1, 0]


def test_a_decode_that_rows_keep_joining_stays_as_wide_as_its_rows(setup, monkeypatch):
    """Rows join at every step while the oldest leave: the slots no row uses any more
    are dropped, so the cache stays as wide as its longest-lived rows need (without the
    trim it grew by one slot per step for as long as rows kept coming)."""
    injector, prompts, _ = setup
    widths, step = [], injector.step
    monkeypatch.setattr(
        injector, "step", lambda ids, mask, *a: widths.append(mask.shape[1]) or step(ids, mask, *a)
    )
    calls = [0]

    def join(going: int):
        calls[0] += 1
        return (_prefill(setup, [1], False), [3]) if calls[0] < 20 else None

    out = decode_from(injector, _prefill(setup, [1], False), max_new_tokens=[3], join=join)
    alone = decode(
        injector, RowPrompts.per_row(prompts, [1]), [CONTEXTS[1]], pad_id=0, max_new_tokens=[3]
    )[0].tokens
    assert len(out) == 20 and all(row.tokens == alone for row in out)
    row_width = 1 + 6 + len(CONTEXTS[1]) + 3  # BOS, prompt, context, its tokens
    assert max(widths) <= row_width + 3, widths
