"""OPRO: Large Language Models as Optimizers (Yang et al. 2023, arXiv:2309.03409).

An instruction-following LM is shown the instructions tried so far with their
scores (worst to best, as in the paper, so the best sit next to the question)
and a few labelled task examples drawn from the user's own training data, and
asked for a new instruction. Each reply is one LM call; its instruction goes
into the seed template and is scored on the examples (one evaluation).

Where it goes is option `position`: `begin` (default) puts it in front of the
template (the paper's "Q_begin"), `end` between the text and the answer cue
("Q_end": `Review: {text}\n<instruction>\nSentiment:`). The paper reports
either can win depending on the model; `end` is also much cheaper to score,
since candidates then differ only after the text and the scorer runs each
example's text once for all of them instead of once per candidate.
The first round, with no instruction tried yet but the seed, amounts to drafting
instructions from representative examples of the corpus.

Options: `optimizer` (a backbone name or an OpenAI-compatible URL; default
`smollm2-135m`), `per_step` replies per round (4), `shown` past instructions (8),
`examples` shown (3), `temperature` (1.0), `max_tokens` (48), `position`
(begin or end). Tests pass an
`OptimizerLM` object as `optimizer`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from softprompt.backbones import DEFAULT_BACKBONE, Backbone
from softprompt.errors import ConfigError
from softprompt.search.base import COUNT, Budget, Ranked, TaskSpec, register_search
from softprompt.search.optimizer_lm import LocalLM, OptimizerLM, optimizer_lm

POSITIONS = ("begin", "end")


@dataclass
class OproConfig:
    """`optimizer`: the LM that writes instructions (a backbone name, a Backbone, or an
    OptimizerLM); each round shows it the `shown` best instructions so far and `examples`
    task rows, and asks `per_step` times at `temperature` for up to `max_tokens` tokens;
    `position` puts the instruction at the template's begin or end."""

    BOUNDS: ClassVar[dict[str, tuple[int, int]]] = {
        "per_step": COUNT,
        "shown": COUNT,
        "examples": COUNT,
        "max_tokens": (1, 4096),
    }
    optimizer: Any = DEFAULT_BACKBONE
    per_step: int = 4
    shown: int = 8
    examples: int = 3
    temperature: float = 1.0
    max_tokens: int = 48
    position: str = "begin"

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise ConfigError(
                f"search.options.position: unknown position {self.position!r}; choose one of "
                f"{', '.join(POSITIONS)}"
            )


def meta_prompt(
    spec: TaskSpec,
    history: list[Ranked],
    shots: list,
    seed_template: str,
    position: str = "begin",
) -> str:
    """The OPRO meta-prompt: task, examples, past instructions with scores (ascending)."""
    labels = ", ".join(spec.labels)
    lines = [
        f"Write one instruction that helps a language model label texts as: {labels}.",
        "Examples of the task:",
    ]
    lines += [f"Text: {e.text[:200]}\nLabel: {e.label}" for e in shots]
    if history:
        lines.append("Instructions tried so far, with their accuracy (higher is better):")
        for r in history:
            instruction = instruction_of(r.template, seed_template, position)
            instruction = instruction or "(no instruction)"
            lines.append(f"Instruction: {instruction}\nAccuracy: {100 * r.score.accuracy:.0f}")
    lines.append(
        "Write a new instruction, different from the ones above, that gets a higher accuracy. "
        "Reply with the instruction only, one sentence."
    )
    return "\n\n".join(lines)


def place(instruction: str, seed_template: str, position: str = "begin") -> str:
    """The seed template with `instruction` in front of it or just after `{text}`."""
    if position == "begin":
        return instruction + "\n" + seed_template
    head, tail = seed_template.split("{text}", 1)
    return head + "{text}\n" + instruction + tail


def instruction_of(template: str, seed_template: str, position: str = "begin") -> str:
    """The instruction `place` put into `seed_template` ("" for the seed itself)."""
    if position == "begin":
        found = template.endswith(seed_template)
        return template[: -len(seed_template)].strip() if found else ""
    head, tail = seed_template.split("{text}", 1)
    start, end = head + "{text}\n", len(template) - len(tail)
    if template.startswith(start) and template.endswith(tail) and end >= len(start):
        return template[len(start) : end].strip()
    return ""


def clean(reply: str) -> str:
    """The first non-empty line of a reply, without a label or quotes."""
    for line in reply.splitlines():
        line = re.sub(r"^\s*(new\s+)?instruction\s*[:\-]\s*", "", line, flags=re.I).strip()
        line = line.strip("\"'`*[]<> ").replace("{", "(").replace("}", ")")
        if line:
            return line[:300]
    return ""


def _lm(spec: TaskSpec, optimizer, seed: int) -> OptimizerLM:
    if isinstance(optimizer, Backbone):
        return LocalLM(optimizer, seed)
    if not isinstance(optimizer, str):
        return optimizer  # an OptimizerLM object (tests, callers with their own client)
    if optimizer == spec.backbone.name:  # one copy in memory: the scorer's backbone
        return optimizer_lm(spec.backbone, seed)
    return optimizer_lm(optimizer, seed)


@register_search("opro", OproConfig)
def opro(spec: TaskSpec, budget: Budget, rng: random.Random, opts: OproConfig) -> None:
    lm = _lm(spec, opts.optimizer, rng.randrange(2**31))
    pool = spec.train or spec.examples
    while True:
        history = budget.ranked()[: opts.shown][::-1]  # worst shown first, best last
        shots = rng.sample(pool, min(opts.examples, len(pool)))
        prompt = meta_prompt(spec, history, shots, spec.template, opts.position)
        fresh = []
        for _ in range(opts.per_step):
            budget.lm_call()
            reply = lm.complete(
                [{"role": "user", "content": prompt}],
                temperature=opts.temperature,
                max_tokens=opts.max_tokens,
            )
            instruction = clean(reply)
            if instruction:
                fresh.append(spec.candidate(place(instruction, spec.template, opts.position)))
        budget.score(fresh)
