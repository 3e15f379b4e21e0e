"""Toy sentiment rows from the tiny vocabulary, shared by test folders (import as `toydata`;
`conftest` is ambiguous once several folders have one)."""

from __future__ import annotations

import random

from softprompt.data import Example

LABELS = ["negative", "positive"]
TEMPLATE = "review : {text} sentiment :"

_POSITIVE = "good great excellent amazing best love loved enjoyed fun funny nice".split()
_NEGATIVE = "bad terrible awful worst hate hated boring dull poor waste sad".split()
_FILLER = "the movie film plot acting story actors was is very really so too and but".split()


def toy_examples(count: int, seed: int) -> list[Example]:
    """Sentiment-like rows made only of tiny-vocabulary words, of varied length."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = LABELS[i % 2]
        words = _POSITIVE if label == "positive" else _NEGATIVE
        body = [rng.choice(_FILLER) for _ in range(rng.randint(1, 9))]
        body.insert(rng.randint(0, len(body)), rng.choice(words))
        rows.append(Example(" ".join(body) + " " + rng.choice(words), label))
    return rows
