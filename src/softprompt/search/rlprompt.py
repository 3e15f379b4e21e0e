"""RLPrompt-style search (Deng et al. 2022, arXiv:2205.12548), reduced to its core.

A small policy picks n trigger tokens (placed between the text and the answer
cue, as in `triggers.py`): one categorical distribution per position over a
pool of whole-word tokens, i.e. (n, K) logits. Each round samples `samples`
prompts, scores them on the examples (one evaluation each), and takes a
REINFORCE step with the round's mean reward as the baseline. The reward is the
negative cross-entropy of the frozen model's label scores (dense, so small
improvements still teach the policy) plus its accuracy. RLPrompt's policy is an
MLP on a frozen LM; a table of logits is the smallest policy that learns which
tokens help, and keeps the method cheap next to the scoring it drives.

Options: `triggers` (4), `samples` per round (8), `vocab` (tokens in the pool, 300),
`lr` (0.5), `entropy` bonus (0.01).
"""

from __future__ import annotations

import random

import torch

from softprompt.errors import ConfigError
from softprompt.search.base import Budget, TaskSpec, register_search
from softprompt.search.triggers import Triggers

DEFAULTS = {"triggers": 4, "samples": 8, "vocab": 300, "lr": 0.5, "entropy": 0.01}


@register_search("rlprompt")
def rlprompt(spec: TaskSpec, budget: Budget, rng: random.Random, options: dict) -> None:
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"search options: unknown {unknown}; known: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **options}
    trig = Triggers(spec, int(opts["vocab"]))
    pool = trig.pool  # (K,)
    logits = torch.zeros(int(opts["triggers"]), len(pool), requires_grad=True)  # (n, K)
    optimizer = torch.optim.Adam([logits], lr=float(opts["lr"]))
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    while True:
        with torch.no_grad():
            picks = torch.multinomial(
                logits.softmax(-1), int(opts["samples"]), replacement=True, generator=generator
            ).T  # (S, n)
        scores = budget.score([trig.candidate(pool[p].tolist()) for p in picks])
        scored = [i for i, s in enumerate(scores) if s.examples]
        if len(scored) < 2:
            continue
        reward = torch.tensor([scores[i].accuracy - scores[i].loss for i in scored])  # (S',)
        advantage = (reward - reward.mean()) / (reward.std() + 1e-6)  # baseline: round mean
        log_probs = logits.log_softmax(-1)  # (n, K)
        chosen = log_probs.gather(1, picks[scored].T).sum(0)  # (S',) log pi(prompt)
        entropy = -(log_probs.exp() * log_probs).sum()
        loss = -(advantage * chosen).mean() - float(opts["entropy"]) * entropy
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
