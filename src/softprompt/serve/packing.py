"""Classification rows packed end to end, so a mixed batch computes no padding.

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

from softprompt.inject.packing import pack_rows  # noqa: F401 (serve.engine imports it here)
from softprompt.inject.prompt import attention_mask


@dataclass
class Segment:
    """Where one request sits: packed row, first column, length."""

    row: int
    start: int
    length: int


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


@torch.no_grad()
def packed_hidden(
    injector,
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
    device = injector.device
    width = max(sum(len(c) for c in (contexts[i] for i in members)) for members in bins)
    used = [list(dict.fromkeys(choice[i] for i in members)) for members in bins]
    slots = max(sum(cached[p][1] for p in row) for row in used)  # M: prefix slots per row
    ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(bins), width), dtype=torch.long)
    sees = torch.zeros((len(bins), width, slots + width), dtype=torch.bool)
    sees[:, torch.arange(width), slots + torch.arange(width)] = True  # padding sees itself
    segments: list[Segment | None] = [None] * len(contexts)
    for r, members in enumerate(bins):
        offsets, at = {}, 0
        for p in used[r]:
            offsets[p] = at
            at += cached[p][1]
        start = 0
        for i in members:
            n, p = len(contexts[i]), choice[i]
            ids[r, start : start + n] = torch.tensor(contexts[i], dtype=torch.long)
            positions[r, start : start + n] = cached[p][1] + torch.arange(n)
            block = sees[r, start : start + n]  # (n, M + C)
            block[:, offsets[p] : offsets[p] + cached[p][1]] = True
            block[:, slots + start : slots + start + n] = torch.ones(n, n).tril().bool()
            segments[i] = Segment(r, start, n)
            start += n
    cache = _prefix(cached, used, slots, injector.config) if slots else None
    mask = attention_mask(sees.unsqueeze(1).to(device), injector.config, injector.head.weight.dtype)
    out = injector.run_core(
        inputs_embeds=injector.embed(ids.to(device)),  # (R, C, d)
        attention_mask=mask,  # (R, 1, C, M + C)
        position_ids=positions.to(device),
        cache=cache,
    )
    return out.last_hidden_state, segments  # (R, C, d)


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
