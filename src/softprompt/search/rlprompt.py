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
from dataclasses import dataclass
from typing import ClassVar

import torch

from softprompt.search.base import COUNT, Budget, TaskSpec, register_search
from softprompt.search.triggers import Triggers


@dataclass
class RLPromptConfig:
    """`triggers` tokens from the `vocab` most frequent, a policy of `samples` draws a
    round trained at `lr` with an `entropy` bonus."""

    BOUNDS: ClassVar[dict[str, tuple[int, int]]] = {
        "triggers": COUNT,
        "samples": COUNT,
        "vocab": COUNT,
    }
    triggers: int = 4
    samples: int = 8
    vocab: int = 300
    lr: float = 0.5
    entropy: float = 0.01


@register_search("rlprompt", RLPromptConfig)
def rlprompt(spec: TaskSpec, budget: Budget, rng: random.Random, opts: RLPromptConfig) -> None:
    trig = Triggers(spec, opts.vocab)
    pool = trig.pool  # (K,)
    logits = torch.zeros(opts.triggers, len(pool), requires_grad=True)  # (n, K)
    optimizer = torch.optim.Adam([logits], lr=opts.lr)
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    while True:
        with torch.no_grad():
            picks = torch.multinomial(
                logits.softmax(-1), opts.samples, replacement=True, generator=generator
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
        loss = -(advantage * chosen).mean() - opts.entropy * entropy
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
