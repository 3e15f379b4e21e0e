"""Discrete prompt search behind one interface, and the bridge to soft prompts.

    from softprompt.search import TaskSpec, search
    result = search(spec, method="autoprompt", budget=200, seed=0)
    result.ranked[0].template, result.ranked[0].score.accuracy

Methods (one file each, registered by name): `random-edit` and `greedy-edit`
(baselines, edits.py), `autoprompt` (Shin et al. 2020), `opro` (Yang et al. 2023),
`rlprompt` (Deng et al. 2022). The budget counts candidate evaluations (one
candidate scored on the examples); generating methods also count LM calls.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from softprompt.search.base import (
    SEARCHES,
    Budget,
    BudgetExhausted,
    Ranked,
    TaskSpec,
    get_search,
    register_search,
    search_methods,
)
from softprompt.search.scorer import Candidate, CandidateScorer, Score

__all__ = [
    "Candidate",
    "CandidateScorer",
    "Ranked",
    "Score",
    "SearchResult",
    "TaskSpec",
    "register_search",
    "search",
    "search_methods",
]


@dataclass
class SearchResult:
    method: str
    seed: int
    ranked: list[Ranked]  # best first, seed template included
    seed_score: Score
    evaluations: int
    lm_calls: int
    budget: int

    @property
    def best(self) -> Ranked:
        return self.ranked[0]


def search(
    spec: TaskSpec,
    *,
    method: str,
    budget: int,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    lm_calls: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SearchResult:
    """Search for a better template than `spec.template`; ranked prompts, best first.

    The seed template is scored first (one evaluation of the budget), so every
    method is judged against where it started and never returns something worse."""
    run = get_search(method)
    config = SEARCHES.config(method, dict(options or {}), "search.options")
    scorer = CandidateScorer(
        spec.backbone, spec.verbalizer_ids, spec.examples, max_text_tokens=spec.max_text_tokens
    )
    tracker = Budget(scorer, budget, lm_calls)
    tracker.on_score = progress
    rng = random.Random(seed)
    seed_candidate = spec.candidate(spec.template)
    (seed_score,) = tracker.score([seed_candidate])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            run(spec, tracker, rng, config)
        except BudgetExhausted:
            pass
    return SearchResult(
        method=method,
        seed=seed,
        ranked=tracker.ranked(),
        seed_score=seed_score,
        evaluations=tracker.used,
        lm_calls=tracker.lm_calls,
        budget=budget,
    )
