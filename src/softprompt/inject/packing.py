"""Packing variable-length requests end to end into rows of a fixed width.

Padding every row to the longest makes the frozen model run tokens that mean nothing;
rows packed end to end run only real tokens. This module plans the rows (which request
goes in which row); the engine (serve) and the candidate scorer (search) both pack with it.
"""

from __future__ import annotations


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
