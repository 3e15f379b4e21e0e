"""AutoPrompt (Shin, Razeghi, Logan, Wallace & Singh 2020, arXiv:2010.15980).

Trigger tokens between the text and the answer cue are chosen by gradient:
the first-order change of the loss when trigger i becomes token v is
(e_v - e_i) . dL/de_i (HotFlip), so the `proposals` tokens with the most
negative e_v . dL/de_i are the candidates for position i. They are scored
together on the examples (one evaluation each) and the best replaces the
current trigger if it beats it. Positions are visited round-robin.

Options: `triggers` (4), `proposals` per step (8), `vocab` (tokens allowed, 2000),
`grad_examples` (training rows per gradient, 16).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from softprompt.search.base import COUNT, Budget, TaskSpec, register_search
from softprompt.search.triggers import Triggers


@dataclass
class AutoPromptConfig:
    """`triggers` tokens after the text, chosen from the `vocab` most frequent; each round
    tries `proposals` swaps at one position, ranked by the gradient on `grad_examples`."""

    BOUNDS: ClassVar[dict[str, tuple[int, int]]] = {
        "triggers": COUNT,
        "proposals": COUNT,
        "vocab": COUNT,
        "grad_examples": COUNT,
    }
    triggers: int = 4
    proposals: int = 8
    vocab: int = 2000
    grad_examples: int = 16


@register_search("autoprompt", AutoPromptConfig)
def autoprompt(spec: TaskSpec, budget: Budget, rng: random.Random, opts: AutoPromptConfig) -> None:
    trig = Triggers(spec, opts.vocab)
    pool = trig.pool.tolist()
    current = [rng.choice(pool) for _ in range(opts.triggers)]
    (current_score,) = budget.score([trig.candidate(current)])
    source = spec.train or spec.examples
    table = trig.injector.embedding_table()  # (V, d), read block by block
    step = 0
    while True:
        position = step % len(current)
        step += 1
        batch = rng.sample(source, min(opts.grad_examples, len(source)))
        grad = trig.gradient(current, batch)  # (n, d)
        flip = -table.scores(grad[position])[trig.pool.to(grad.device)]  # (K,) larger = better
        order = flip.argsort(descending=True).tolist()
        swaps = [pool[k] for k in order if pool[k] != current[position]][: opts.proposals]
        trials = [current[:position] + [t] + current[position + 1 :] for t in swaps]
        scores = budget.score([trig.candidate(t) for t in trials])
        best = max(range(len(trials)), key=lambda i: scores[i].key)
        if scores[best].key > current_score.key:
            current, current_score = trials[best], scores[best]
