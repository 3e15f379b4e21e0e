"""The search interface: a task to search for, a budget, a registry of methods by name.

Every method is a function `(spec, budget, rng, config) -> None`, registered with the
dataclass its options are checked against before any candidate is scored, that proposes
candidates and scores them through `budget.score(...)`; the budget refuses
evaluations past its limit, keeps every scored candidate, and ranks them. So a
method cannot overspend, and `search()` never branches on the method.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from softprompt.backbones import Backbone
from softprompt.data import Example
from softprompt.errors import ConfigError
from softprompt.registry import Registry
from softprompt.search.scorer import Candidate, CandidateScorer, Score
from softprompt.tasks.verbalizer import Verbalizer


@dataclass
class TaskSpec:
    """What to search for: a frozen causal LM, labelled examples, label words, a seed template.

    `examples` are scored for every candidate (the search signal and the validation
    score); `train` is where generating methods draw task examples to show an LM."""

    backbone: Backbone
    labels: list[str]
    template: str
    examples: list[Example]
    verbalizer: dict[str, list[str]] | None = None
    train: list[Example] = field(default_factory=list)
    max_text_tokens: int = 200

    def __post_init__(self) -> None:
        if "{text}" not in self.template:
            raise ConfigError(f"task.template: must contain {{text}}, got {self.template!r}")
        self.verbalizer_ids = Verbalizer.build(
            self.labels, self.verbalizer, self.backbone.tokenizer
        )

    def candidate(self, template: str) -> Candidate:
        return Candidate.from_template(template, self.backbone.tokenizer)


@dataclass(frozen=True)
class Ranked:
    """One scored prompt of a search result."""

    template: str
    score: Score
    evaluation: int  # which evaluation (1-based) first scored it
    candidate: Candidate


class BudgetExhausted(Exception):
    """Raised inside a method when it asks for more evaluations than are left."""


class Budget:
    """Counts candidate evaluations (and LM calls) and keeps the best candidates seen."""

    def __init__(self, scorer: CandidateScorer, evaluations: int, lm_calls: int | None = None):
        if evaluations < 1:
            raise ConfigError(f"search.budget: must be >= 1 evaluation, got {evaluations}")
        self.scorer = scorer
        self.limit = evaluations
        self.lm_limit = lm_calls if lm_calls is not None else evaluations
        self.lm_calls = 0
        self.seen: dict[Candidate, Ranked] = {}
        self.on_score: Callable[[int], None] | None = None  # progress hook: evaluations used

    @property
    def used(self) -> int:
        return self.scorer.evaluations

    @property
    def left(self) -> int:
        return self.limit - self.used

    def score(self, candidates: list[Candidate]) -> list[Score]:
        """Score candidates (up to what is left; a repeat is free and not rescored)."""
        fresh = list(dict.fromkeys(c for c in candidates if c not in self.seen))
        if not fresh and candidates:
            return [self.seen[c].score for c in candidates]
        if self.left <= 0:
            raise BudgetExhausted
        fresh = fresh[: self.left]
        for cand, score in zip(fresh, self.scorer.score(fresh), strict=True):
            self.seen[cand] = Ranked(cand.template, score, self.used, cand)
        if self.on_score:
            self.on_score(self.used)
        return [self.seen[c].score if c in self.seen else _UNSCORED for c in candidates]

    def lm_call(self) -> None:
        if self.lm_calls >= self.lm_limit:
            raise BudgetExhausted
        self.lm_calls += 1

    def best(self) -> Ranked:
        return max(self.seen.values(), key=lambda r: r.score.key)

    def ranked(self) -> list[Ranked]:
        return sorted(self.seen.values(), key=lambda r: r.score.key, reverse=True)


_UNSCORED = Score(accuracy=float("-inf"), loss=float("inf"), examples=0)

# a method's options arrive as its registered config class, checked (validate.check_fields)
SearchFn = Callable[[TaskSpec, Budget, random.Random, Any], None]
# each module of softprompt.search registers its methods when the registry first looks
SEARCHES: Registry[None] = Registry("method", "search", "softprompt.search", "search.method")
# bounds of a search option that counts things: past these it only ever comes from a typo
COUNT = (1, 1_000_000)


def register_search(name: str, config_class: type) -> Callable[[SearchFn], SearchFn]:
    """Register a search method under `name` (one file per method) with the dataclass its
    options are checked against (`search.options.KEY` in messages)."""
    return SEARCHES.register(name, config_class)


def search_methods() -> list[str]:
    return SEARCHES.names()


def get_search(name: str) -> SearchFn:
    return SEARCHES.builder(name)
