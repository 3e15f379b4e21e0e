"""One decoding loop for every caller: training-side prediction, the server, the optimizer LM.

Each row continues its context from its own prompt's K/V prefix (computed once per
distinct prompt, or taken from the injector's prompt cache), left-padded so every row's
last token sits at the last column. Per step the whole batch runs one token on the
shared attention cache; what picks the next token (`choose`: greedy, or a sampler with
each row's own parameters) and what watches the text (`on_token`: stop sequences,
streaming, log-probs) are the caller's, so the loop itself is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from softprompt.inject.causal import CausalInjector, PrefixCache
from softprompt.inject.packing import Packed, pack_rows, run_packed, worth_packing
from softprompt.inject.prompt import DecoderInjector, Prompt, RowPrompts

# (b, V) logits of the rows still going, their indices among the B rows -> one id each
Choose = Callable[[torch.Tensor, list[int]], list[int]]
# (row, its kept tokens so far, its (V,) logits this step) -> True when the row is done
OnToken = Callable[[int, list[int], torch.Tensor], bool]
# (rows still going) -> rows joining now (`prefill`ed, their token limits), or None
Join = Callable[[int], "tuple[Running, list[int]] | None"]
# (row, its tokens and why it stopped) as each row ends
Done = Callable[[int, "Decoded"], None]


@dataclass
class Decoded:
    """One row's new tokens and why it stopped: "stop" (a stop id, or `on_token` said so)
    or "length" (its `max_new_tokens`)."""

    tokens: list[int]
    reason: str


def pad_left(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad so every row's last token sits at the end: -> ids (B, T), mask (B, T)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


def greedy(logits: torch.Tensor, rows: list[int] | None = None) -> list[int]:
    """(b, V) -> the likeliest id of each row."""
    return logits.argmax(-1).tolist()


def _no_prefix(batch: int, device: torch.device) -> PrefixCache:
    """No prompt and no BOS: the contexts are the model's whole input."""
    empty = torch.zeros((batch, 0), dtype=torch.long, device=device)
    return PrefixCache(None, empty, torch.zeros(batch, dtype=torch.long, device=device))


@dataclass
class Running:
    """A batch ready for its next token: each row's last hidden state, the attention
    cache, which cache slots are real, and the position of each row's last token."""

    hidden: torch.Tensor  # (B, d)
    cache: DynamicCache
    mask: torch.Tensor  # (B, W) 1 = a real slot
    last: torch.Tensor  # (B, 1)


@torch.no_grad()
def decode(
    injector: DecoderInjector,
    prompts: Prompt | RowPrompts | None,
    contexts: list[list[int]],
    *,
    pad_id: int,
    max_new_tokens: list[int],
    stop_ids: Collection[int] = (),
    choose: Choose = greedy,
    on_token: OnToken | None = None,
    virtual: list[list[int]] | None = None,
) -> list[Decoded]:
    """Continue each context (ids without BOS) from its row's prompt.

    `prompts` None runs the contexts as they are (no prompt, no BOS added: a chat
    template's own ids). A row ends at an id in `stop_ids` (not kept), when `on_token`
    returns True after one of its tokens, or at its `max_new_tokens`. `virtual` marks
    template slots per context token (the prompt's inline vectors)."""
    running = prefill(injector, prompts, contexts, pad_id, virtual)
    return _loop(injector, running, max_new_tokens, stop_ids, choose, on_token)


@torch.no_grad()
def decode_packed(
    injector: CausalInjector,
    cached: list[tuple[list[tuple[torch.Tensor, torch.Tensor]], int]],
    choice: list[int],
    contexts: list[list[int]],
    *,
    capacity: int,
    pad_id: int,
    max_new_tokens: list[int],
    stop_ids: Collection[int] = (),
    choose: Choose = greedy,
    on_token: OnToken | None = None,
) -> list[Decoded] | None:
    """`decode` with the contexts run packed end to end (no padding: `packing.py`), each
    row then going on from its own prompt's K/V (`cached[choice[i]]`: per-layer K/V and
    width) and its context's, gathered into one cache. The same tokens as `decode`;
    None when packing would cost more than padding (`worth_packing`)."""
    running = prefill_packed(injector, cached, choice, contexts, capacity=capacity, pad_id=pad_id)
    if running is None:
        return None
    return _loop(injector, running, max_new_tokens, stop_ids, choose, on_token)


def prefill_packed(
    injector: CausalInjector,
    cached: list[tuple[list[tuple[torch.Tensor, torch.Tensor]], int]],
    choice: list[int],
    contexts: list[list[int]],
    *,
    capacity: int,
    pad_id: int,
) -> Running | None:
    """`decode_packed`'s first pass: the rows ready for their first token, or None when
    packing would cost more than padding (`worth_packing`)."""
    widths = [width for _, width in cached]
    bins = pack_rows([len(c) for c in contexts], capacity, choice, widths)
    if not worth_packing(bins, choice, widths, capacity):
        return None
    packed = run_packed(injector, cached, bins, choice, contexts, pad_id=pad_id, keep_cache=True)
    return _unpack(injector, packed, [widths[p] for p in choice], choice)


def prefill(
    injector: DecoderInjector,
    prompts: Prompt | RowPrompts | None,
    contexts: list[list[int]],
    pad_id: int,
    virtual: list[list[int]] | None = None,
) -> Running:
    """`decode`'s first pass: the contexts left-padded to one width after each row's
    prompt prefix, ready for their first token."""
    device = injector.device
    ids, mask = (t.to(device) for t in pad_left(contexts, pad_id))  # (B, T)
    batch = ids.shape[0]
    rows, inline = None, None
    if prompts is None:
        prefix = _no_prefix(batch, device)
    else:
        rows = RowPrompts.of(prompts, batch, device)
        if virtual is not None and any(v >= 0 for row in virtual for v in row):
            inline = pad_left([[v + 1 for v in row] for row in virtual], 0)[0].to(device) - 1
        prefix = injector.prefix_cache(rows, batch)
    cache = prefix.cache if prefix.cache is not None else DynamicCache(config=injector.config)
    positions = prefix.lengths[:, None] + (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    full_mask = torch.cat([prefix.mask, mask], 1)  # (B, m + T)
    hidden = injector.step(ids, full_mask, positions, cache, rows, inline)  # (B, T, d)
    return Running(hidden[:, -1], cache, full_mask, positions[:, -1:])


def _unpack(
    injector: DecoderInjector, packed: Packed, widths: list[int], choice: list[int]
) -> Running:
    """Each request's own slots of the packed rows' cache (its prompt's, then its
    tokens'), gathered into one row each, left-padded to the longest: (B, kvh, W, hd)."""
    device = packed.hidden.device
    rows, span = packed.hidden.shape[0], packed.slots + packed.hidden.shape[1]  # R, M + C
    lengths = [w + s.length for w, s in zip(widths, packed.segments, strict=True)]
    width, zero = max(lengths), rows * span  # `zero`: an appended all-zero slot
    index = torch.full((len(lengths), width), zero, dtype=torch.long)  # (B, W)
    for i, (w, s) in enumerate(zip(widths, packed.segments, strict=True)):
        first = packed.offsets[s.row].get(choice[i], 0)
        own = [*range(first, first + w), *range(packed.slots + s.start, packed.slots + s.end)]
        index[i, width - len(own) :] = s.row * span + torch.tensor(own)
    index = index.to(device)
    cache = DynamicCache(config=injector.config)
    for layer, kv in enumerate(packed.cache.layers):
        keys, values = (_gather(t, index) for t in (kv.keys, kv.values))
        cache.update(keys, values, layer)
    ends = torch.tensor([[s.row, s.end - 1] for s in packed.segments], device=device)  # (B, 2)
    last = torch.tensor(lengths, device=device)[:, None] - 1  # (B, 1)
    hidden = packed.hidden[ends[:, 0], ends[:, 1]]  # (B, d)
    return Running(hidden, cache, (index != zero).long(), last)


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(R, kvh, S, hd) slots, (B, W) flat indices (R * S: zeros) -> (B, kvh, W, hd)."""
    rows, heads, span, dim = t.shape
    flat = t.transpose(1, 2).reshape(rows * span, heads, dim)  # (R * S, kvh, hd)
    flat = torch.cat([flat, flat.new_zeros(1, heads, dim)])
    return flat[index.to(t.device)].transpose(1, 2).contiguous()  # (B, kvh, W, hd)


def decode_from(
    injector: DecoderInjector,
    running: Running,
    *,
    max_new_tokens: list[int],
    stop_ids: Collection[int] = (),
    choose: Choose = greedy,
    on_token: OnToken | None = None,
    join: Join | None = None,
    on_done: Done | None = None,
) -> list[Decoded]:
    """The decoding loop from prefilled rows (`prefill`, `prefill_packed`), with rows
    joining while it runs (continuous batching): after every step `join` may hand in
    more prefilled rows, numbered after every row so far, which take their first token
    at the next step. `on_done` hears of each row as it ends, so its answer need not
    wait for the others."""
    return _loop(injector, running, max_new_tokens, stop_ids, choose, on_token, join, on_done)


def _loop(
    injector: DecoderInjector,
    running: Running,
    max_new_tokens: list[int],
    stop_ids: Collection[int],
    choose: Choose,
    on_token: OnToken | None,
    join: Join | None = None,
    on_done: Done | None = None,
) -> list[Decoded]:
    """One token per step for the rows still going, until every row is done.

    A row that is done leaves the batch before the next step (its cache rows with it),
    so the steps after it cost only the rows left; rows from `join` enter the batch
    left-padded to its cache width. A row's tokens do not depend on which others share
    its steps (its own cache, mask and positions, rows run independently)."""
    out: list[Decoded] = []
    limits: list[int] = []
    state, rows = _admit(None, [], running, max_new_tokens, out, limits, on_done)
    while rows:
        logits = injector.logits(state.hidden)  # (b, V): the rows still going
        token = choose(logits, rows)  # b ids
        going = []
        for j, i in enumerate(rows):
            done = _advance(out[i], i, token[j], logits[j], stop_ids, on_token)
            if done or len(out[i].tokens) >= limits[i]:
                if on_done is not None:
                    on_done(i, out[i])
            else:
                going.append(j)
        state, rows = _step(injector, state, rows, token, going)
        joining = join(len(rows)) if join is not None else None
        if joining is not None:
            state, rows = _admit(state, rows, *joining, out, limits, on_done)
    return out


def _step(
    injector: DecoderInjector, state: Running, rows: list[int], token: list[int], going: list[int]
) -> tuple[Running | None, list[int]]:
    """The rows `going` (places in `rows`) run their new token; finished rows leave the
    batch first. (None, []) when no row goes on."""
    if not going:
        return None, []
    if len(going) < len(rows):  # finished rows leave the batch
        keep = torch.tensor(going, dtype=torch.long, device=state.mask.device)
        state = _trim(_select(state, keep))
        rows, token = [rows[j] for j in going], [token[j] for j in going]
    position = state.last + 1  # (b, 1)
    mask = torch.cat([state.mask, state.mask.new_ones(len(rows), 1)], 1)  # (b, W + 1)
    step_ids = torch.tensor(token, device=injector.device).unsqueeze(1)  # (b, 1)
    hidden = injector.step(step_ids, mask, position, state.cache)[:, -1]  # (b, d)
    return Running(hidden, state.cache, mask, position), rows


def _admit(
    state: Running | None,
    rows: list[int],
    new: Running,
    new_limits: list[int],
    out: list[Decoded],
    limits: list[int],
    on_done: Done | None,
) -> tuple[Running | None, list[int]]:
    """Rows joining the batch, numbered after every row so far; a row with no tokens to
    make is done at once, the others join `state` (None: no batch yet)."""
    first = len(out)
    out.extend(Decoded([], "length") for _ in new_limits)
    limits.extend(new_limits)
    fresh = [j for j, limit in enumerate(new_limits) if limit > 0]
    for j, limit in enumerate(new_limits):
        if limit <= 0 and on_done is not None:
            on_done(first + j, out[first + j])
    if not fresh:
        return state, rows
    if len(fresh) < len(new_limits):
        new = _select(new, torch.tensor(fresh, dtype=torch.long, device=new.mask.device))
    joined = [first + j for j in fresh]
    if state is None:
        _in_place(new.cache)
        return new, joined
    return _merge(state, new), rows + joined


def _merge(a: Running, b: Running) -> Running:
    """b's rows after a's, both left-padded to the wider cache: every row keeps its own
    slots, mask and positions, the padding is masked out."""
    width = max(a.mask.shape[1], b.mask.shape[1])
    for layer, (old, new) in enumerate(zip(a.cache.layers, b.cache.layers, strict=True)):
        keys = torch.cat([_pad_slots(old.keys, width), _pad_slots(new.keys, width)])
        values = torch.cat([_pad_slots(old.values, width), _pad_slots(new.values, width)])
        a.cache.layers[layer] = _Slots(keys, values)  # (b1 + b2, kvh, W, hd)
    mask = torch.cat([_pad_slots(a.mask, width, dim=-1), _pad_slots(b.mask, width, dim=-1)])
    return Running(torch.cat([a.hidden, b.hidden]), a.cache, mask, torch.cat([a.last, b.last]))


def _trim(state: Running) -> Running:
    """Without the leading slots no row uses (padding of rows that have left): a batch
    that rows keep joining would otherwise grow wider at every step, for ever."""
    lead = int(state.mask.any(0).int().argmax())  # the first slot some row uses
    if lead == 0:
        return state
    for layer in state.cache.layers:
        if isinstance(layer, _Slots):
            layer.trim(lead)
        elif getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys, layer.values = layer.keys[..., lead:, :], layer.values[..., lead:, :]
    return Running(state.hidden, state.cache, state.mask[:, lead:], state.last)


def _pad_slots(t: torch.Tensor, width: int, dim: int = -2) -> torch.Tensor:
    """`t` with zero slots in front along `dim`, to `width` slots."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim)


def _select(running: Running, keep: torch.Tensor) -> Running:
    """The rows `keep` (B' indices) of a running batch."""
    cache = _drop(running.cache, keep)
    return Running(running.hidden[keep], cache, running.mask[keep], running.last[keep])


def _drop(cache: DynamicCache, keep: torch.Tensor) -> DynamicCache:
    """Keep only the rows `keep` of every layer's keys and values, in place."""
    for layer in cache.layers:
        if isinstance(layer, _Slots):
            layer.select(keep)
        elif getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys, layer.values = layer.keys[keep], layer.values[keep]  # (b, kvh, W, hd)
    return cache


def _in_place(cache: DynamicCache) -> None:
    """Swap the cache's plain layers for `_Slots` (same keys and values)."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            cache.layers[i] = _Slots(layer.keys, layer.values)


class _Slots(DynamicLayer):
    """One layer's keys and values in buffers with room for the next `ROOM` tokens: a
    step writes its token into the next free slot instead of concatenating.

    `DynamicLayer` concatenates at every step, a fresh (B, kvh, W, hd) tensor per layer,
    keys and values: on SmolLM2 at 16 rows that was 16% of the decode loop's CPU time
    (allocating and copying 44 MB per step), more than attention. Here a buffer is
    reallocated once every `ROOM` steps; `keys` and `values` are views of its filled
    slots, so attention reads the same numbers."""

    ROOM = 64

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self._keys, self._values = self._grown(keys), self._grown(values)
        self._fill(keys.shape[-2])

    def _grown(self, t: torch.Tensor) -> torch.Tensor:
        """`t` (B, kvh, n, hd) copied into a buffer of n + ROOM slots."""
        room = t.new_empty(*t.shape[:-2], t.shape[-2] + self.ROOM, t.shape[-1])
        room[..., : t.shape[-2], :] = t
        return room

    def _fill(self, n: int) -> None:
        self.keys, self.values = self._keys[..., :n, :], self._values[..., :n, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n, t = self.keys.shape[-2], key_states.shape[-2]
        if n + t > self._keys.shape[-2]:
            self._keys, self._values = self._grown(self.keys), self._grown(self.values)
        self._keys[..., n : n + t, :] = key_states
        self._values[..., n : n + t, :] = value_states
        self._fill(n + t)
        return self.keys, self.values

    def trim(self, lead: int) -> None:
        """Drop the first `lead` slots (a view: the room after them stays)."""
        n = self.keys.shape[-2]
        self._keys, self._values = self._keys[..., lead:, :], self._values[..., lead:, :]
        self._fill(n - lead)

    def select(self, keep: torch.Tensor) -> None:
        """Keep the rows `keep` only."""
        n = self.keys.shape[-2]
        self._keys, self._values = self._keys[keep], self._values[keep]
        self._fill(n)


def _advance(
    row: Decoded,
    i: int,
    token: int,
    logits: torch.Tensor,
    stop_ids: Collection[int],
    on_token: OnToken | None,
) -> bool:
    """Take row i's new token (`logits` (V,): its own): True when the row is done."""
    if token in stop_ids:
        row.reason = "stop"
        return True
    row.tokens.append(token)
    if on_token is not None and on_token(i, row.tokens, logits):
        row.reason = "stop"
        return True
    return False
