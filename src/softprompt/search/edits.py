"""Baselines: random and greedy word edits of the seed template.

Every other method is judged against these (the GrIPS-style edit search without
its paraphraser). An edit deletes a word, swaps one for a vocabulary word, or
inserts a vocabulary word, anywhere outside the `{text}` slot.

* `random-edit`: each candidate is the seed with 1..`max_edits` random edits;
  nothing is learned from scores, so it measures what luck alone finds.
* `greedy-edit`: hill climbing; each round scores `proposals` edits of the best
  template so far together, and moves only when one beats it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import ClassVar

from softprompt.search.base import COUNT, Budget, TaskSpec, register_search
from softprompt.search.vocab import word_strings

SLOT = "{text}"


def _pieces(template: str) -> list[str]:
    """Words, whitespace runs and the slot, in order (joining them gives the template)."""
    return [p for p in re.split(r"(\{text\}|\s+)", template) if p]


def random_edit(template: str, words: list[str], rng: random.Random) -> str:
    """One delete / swap / insert of a word outside the slot (the slot is kept)."""
    parts = _pieces(template)
    editable = [i for i, p in enumerate(parts) if p != SLOT and not p.isspace()]
    op = rng.choice(["delete", "swap", "insert"] if editable else ["insert"])
    if op == "insert":
        at = rng.randrange(len(parts) + 1)
        parts[at:at] = [" ", rng.choice(words), " "]
    else:
        at = rng.choice(editable)
        parts[at] = rng.choice(words) if op == "swap" else ""
    text = "".join(parts)
    text = re.sub(r"[ ]{2,}", " ", text).strip(" ")
    return text if SLOT in text else template


@dataclass
class RandomEditConfig:
    """`batch` candidates a round, each `1..max_edits` random edits of the seed template,
    with words from the `vocab` most frequent."""

    BOUNDS: ClassVar[dict[str, tuple[int, int]]] = {
        "max_edits": COUNT,
        "batch": COUNT,
        "vocab": COUNT,
    }
    max_edits: int = 3
    batch: int = 16
    vocab: int = 500


@dataclass
class GreedyEditConfig:
    """`proposals` single edits of the best template so far a round."""

    BOUNDS: ClassVar[dict[str, tuple[int, int]]] = {"proposals": COUNT, "vocab": COUNT}
    proposals: int = 16
    vocab: int = 500


@register_search("random-edit", RandomEditConfig)
def random_search(
    spec: TaskSpec, budget: Budget, rng: random.Random, opts: RandomEditConfig
) -> None:
    words = word_strings(spec.backbone, opts.vocab)
    while True:
        batch = []
        for _ in range(opts.batch):
            text = spec.template
            for _ in range(rng.randint(1, opts.max_edits)):
                text = random_edit(text, words, rng)
            batch.append(spec.candidate(text))
        budget.score(batch)


@register_search("greedy-edit", GreedyEditConfig)
def greedy_search(
    spec: TaskSpec, budget: Budget, rng: random.Random, opts: GreedyEditConfig
) -> None:
    words = word_strings(spec.backbone, opts.vocab)
    current = budget.best()
    while True:
        texts = {random_edit(current.template, words, rng) for _ in range(opts.proposals)}
        budget.score([spec.candidate(t) for t in sorted(texts)])
        best = budget.best()
        if best.score.key > current.score.key:
            current = best
