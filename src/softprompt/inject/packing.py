"""Packing variable-length requests end to end into rows of a fixed width.

Padding every row to the longest makes the frozen model run tokens that mean nothing;
rows packed end to end run only real tokens. `pack_rows` plans the rows (which request
goes in which row; the engine (serve) and the candidate scorer (search) both pack with
it), and `packed_hidden` runs them.

Padding every row of a pass to its longest row makes the frozen model run tokens that
mean nothing (on movie-sentiment, a window of 16 rows padded to its longest holds 1.9x
its real tokens), and cutting the batch into passes of similar length instead makes
each pass stream every weight again. Packing removes both: several requests share one
row of `capacity` tokens, one after another, and one pass runs every row.

Each packed row carries the cached prompt K/V of every task among its requests (a
task's K/V once, however many of its requests the row holds); a token sees its own
task's prompt slots and the earlier tokens of its own request, nothing else, at the
positions it has when run alone. So a request's hidden states equal its own run
(performance.md #6: dynamic padding; this is the padding-free end of it). The padded
path stays for what cannot be packed (label words of several tokens, template slots).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from softprompt.inject.causal import CausalInjector
from softprompt.inject.prompt import attention_mask


def pack_rows(
    lengths: list[int],
    capacity: int,
    prompts: list[int] | None = None,
    widths: list[int] | None = None,
) -> list[list[int]]:
    """Request indices per packed row: ceil(total / capacity) rows filled evenly (the
    batch pads every row to the fullest), longest request first, each into the row
    where the row's cost (its tokens plus the prompt slots it carries) stays lowest;
    a request whose prompt (`prompts[i]`, `widths[p]` slots) the row holds already adds
    no slots, so requests of one task gather in the same rows."""
    prompts = prompts if prompts is not None else [0] * len(lengths)
    widths = widths if widths is not None else [0] * (max(prompts, default=0) + 1)
    count = max(1, -(-sum(lengths) // capacity))
    rows: list[list[int]] = [[] for _ in range(count)]
    cost = [0] * count
    held: list[set[int]] = [set() for _ in range(count)]
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        after = [
            cost[r] + lengths[i] + (0 if prompts[i] in held[r] else widths[prompts[i]])
            for r in range(count)
        ]
        best = min(range(count), key=after.__getitem__)
        cost[best] = after[best]
        held[best].add(prompts[i])
        rows[best].append(i)
    return [r for r in rows if r]


@dataclass
class Segment:
    """Where one request sits: packed row, first column, length."""

    row: int
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


def _stacked(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """A prompt's per-layer K/V, each (1, kvh, w, hd) -> one (L, 2, kvh, w, hd) tensor."""
    return torch.stack([torch.cat([k, v]) for k, v in kv])


def worth_packing(
    bins: list[list[int]], prompts: list[int], widths: list[int], capacity: int
) -> bool:
    """Whether packed rows beat padded passes: not when a row would carry more prompt
    slots than its capacity in tokens.

    Every token of a packed row attends to the slots of every task in the row (and
    the rows share the widest row's slot count), where a padded row attends to its
    own prompt only. With short prompts packing wins (SmolLM2, 8 tasks, windows of
    16: 1.52 s against 1.57 s at 20-token prompts); with long ones the slots swamp
    it (1.80 s against 1.64 s at 50 tokens, 2.01 s against 1.71 s at 100;
    `benchmarks/serve_throughput.py --n-tokens`). There the most slots a packed row
    carried were 66-88 at 20 tokens and 104-306 at 50-100, against rows of 128."""
    carried = max(sum(widths[p] for p in {prompts[i] for i in members}) for members in bins)
    return carried <= capacity


@dataclass
class Packed:
    """What one packed pass leaves: hidden states (R, C, d), where each request sits, and
    (when kept) the cache of every row, per layer (R, kvh, M + C, hd): M prompt slots
    (`offsets[r][p]`: where prompt p's sit in row r), then the packed tokens."""

    hidden: torch.Tensor  # (R, C, d)
    segments: list[Segment]
    cache: DynamicCache | None
    slots: int  # M
    offsets: list[dict[int, int]]


@torch.no_grad()
def packed_hidden(
    injector: CausalInjector,
    cached: list[tuple[list[tuple[torch.Tensor, torch.Tensor]], int]],
    bins: list[list[int]],
    choice: list[int],
    contexts: list[list[int]],
    *,
    pad_id: int,
) -> tuple[torch.Tensor, list[Segment]]:
    """Run requests (`contexts`, ids without BOS; request i uses prompt `choice[i]`,
    whose K/V and width are `cached[choice[i]]`) packed into the rows `bins` (from
    `pack_rows`): -> hidden states (R, C, d) and where each request's are."""
    packed = run_packed(injector, cached, bins, choice, contexts, pad_id=pad_id)
    return packed.hidden, packed.segments


@torch.no_grad()
def run_packed(
    injector: CausalInjector,
    cached: list[tuple[list[tuple[torch.Tensor, torch.Tensor]], int]],
    bins: list[list[int]],
    choice: list[int],
    contexts: list[list[int]],
    *,
    pad_id: int,
    keep_cache: bool = False,
) -> Packed:
    """`packed_hidden`, keeping what a decoding loop needs to go on from each request
    (`keep_cache`: the rows' cache even when no prompt has slots)."""
    device = injector.device
    width = max(sum(len(c) for c in (contexts[i] for i in members)) for members in bins)
    used = [list(dict.fromkeys(choice[i] for i in members)) for members in bins]
    slots = max(sum(cached[p][1] for p in row) for row in used)  # M: prefix slots per row
    ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(bins), width), dtype=torch.long)
    sees = torch.zeros((len(bins), width, slots + width), dtype=torch.bool)
    sees[:, torch.arange(width), slots + torch.arange(width)] = True  # padding sees itself
    segments: list[Segment | None] = [None] * len(contexts)
    offsets: list[dict[int, int]] = []
    for r, members in enumerate(bins):
        offsets.append({})
        at = 0
        for p in used[r]:
            offsets[r][p] = at
            at += cached[p][1]
        start = 0
        for i in members:
            n, p = len(contexts[i]), choice[i]
            ids[r, start : start + n] = torch.tensor(contexts[i], dtype=torch.long)
            positions[r, start : start + n] = cached[p][1] + torch.arange(n)
            block = sees[r, start : start + n]  # (n, M + C)
            block[:, offsets[r][p] : offsets[r][p] + cached[p][1]] = True
            block[:, slots + start : slots + start + n] = torch.ones(n, n).tril().bool()
            segments[i] = Segment(r, start, n)
            start += n
    cache = _prefix(cached, used, slots, injector.config) if slots else None
    if cache is None and keep_cache:
        cache = DynamicCache(config=injector.config)
    mask = attention_mask(sees.unsqueeze(1).to(device), injector.config, injector.head.weight.dtype)
    out = injector.run_core(
        inputs_embeds=injector.embed(ids.to(device)),  # (R, C, d)
        attention_mask=mask,  # (R, 1, C, M + C)
        position_ids=positions.to(device),
        cache=cache,
    )
    return Packed(out.last_hidden_state, segments, cache, slots, offsets)  # (R, C, d)


def _prefix(cached, used: list[list[int]], slots: int, config) -> DynamicCache:
    """Per packed row, its tasks' prompt K/V side by side, zero-padded to M slots."""
    stacked = {p: _stacked(cached[p][0]) for row in used for p in row if cached[p][1]}
    empty = next(iter(stacked.values()))[:, :, :, :0]  # (L, 2, kvh, 0, hd)
    rows = []
    for row in used:
        parts = [stacked[p] for p in row if cached[p][1]]  # (L, 2, kvh, w, hd) each
        kv = torch.cat([empty, *parts], dim=3)  # (L, 2, kvh, m_r, hd)
        if kv.shape[3] < slots:
            pad = kv.new_zeros(*kv.shape[:3], slots - kv.shape[3], kv.shape[4])
            kv = torch.cat([kv, pad], dim=3)
        rows.append(kv)
    every = torch.stack(rows, dim=2)  # (L, 2, R, kvh, M, hd)
    cache = DynamicCache(config=config)
    for layer in range(every.shape[0]):
        cache.update(every[layer, 0], every[layer, 1], layer)
    return cache
