"""Sampling parameters and stop sequences for generation, checked once per input.

Greedy is the default (temperature 0): a task server answers the same input the same
way, and greedy decoding equals `softprompt predict`. With a temperature above 0 each
row draws from its own `torch.Generator`, seeded by `seed` (or at random), so a seeded
request gives the same text whichever batch it shares. `top_k` keeps the k likeliest
tokens, `top_p` the smallest set whose probability reaches p (nucleus sampling), both
applied before the draw as in Hugging Face's warpers. A stop sequence ends the text
where it first appears (the sequence itself is not returned) with finish reason "stop".

Every valid value draws without error: the warpers work on logits shifted so the
likeliest is 0 (a temperature of 1e-45 sends the others to -inf, never to NaN), the
likeliest token always survives top-p (a top_p of 1e-300 rounds to 0 in float32), and
non-finite logits fall back to the argmax.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from softprompt.errors import SoftPromptError
from softprompt.serve.limits import shorten

MAX_STOPS = 4  # as OpenAI's API
MAX_STOP_CHARS = 256
MAX_TEMPERATURE = 2.0  # as OpenAI's API
MAX_SEED = 2**63 - 1


class BadSampling(SoftPromptError):
    """A sampling parameter or stop sequence the server will not use."""


@dataclass
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None: off; k: the chosen token's log-prob and k alternatives

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def generator(self, device: torch.device) -> torch.Generator | None:
        """This row's own random stream (None when greedy)."""
        if self.greedy:
            return None
        seed = self.seed if self.seed is not None else secrets.randbits(63)
        return torch.Generator(device=device).manual_seed(seed)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadSampling(f"{name} must be a number, got {shorten(value)}")
    return float(value)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadSampling(f"{name} must be an integer, got {shorten(value)}")
    return value


def check_sampling(
    temperature: Any = None,
    top_p: Any = None,
    top_k: Any = None,
    seed: Any = None,
    stop: Any = None,
    *,
    vocab: int | None = None,
) -> Sampling:
    """The request's values as a `Sampling`, or BadSampling naming the field and its range.
    None means the default (greedy, no cut-off, no stop sequence)."""
    out = Sampling()
    if temperature is not None:
        out.temperature = _number("temperature", temperature)
        if not 0.0 <= out.temperature <= MAX_TEMPERATURE:
            raise BadSampling(
                f"temperature must be from 0 (greedy) to {MAX_TEMPERATURE}, got {temperature!r}"
            )
    if top_p is not None:
        out.top_p = _number("top_p", top_p)
        if not 0.0 < out.top_p <= 1.0:
            raise BadSampling(f"top_p must be above 0 and at most 1, got {top_p!r}")
    if top_k is not None:
        out.top_k = _integer("top_k", top_k)
        if out.top_k < 0 or (vocab is not None and out.top_k > vocab):
            limit = f" (the vocabulary has {vocab})" if vocab is not None else ""
            raise BadSampling(f"top_k must be 0 (off) or a positive count{limit}, got {top_k!r}")
    if seed is not None:
        out.seed = _integer("seed", seed)
        if not 0 <= out.seed <= MAX_SEED:
            raise BadSampling(f"seed must be from 0 to 2**63 - 1, got {seed!r}")
    out.stop = _stops(stop)
    return out


def _stops(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise BadSampling(f"stop must be a string or a list of strings, got {shorten(stop)}")
    if len(stops) > MAX_STOPS:
        raise BadSampling(f"stop: give at most {MAX_STOPS} sequences, got {len(stops)}")
    for s in stops:
        if not s or len(s) > MAX_STOP_CHARS:
            raise BadSampling(
                f"stop: each sequence must be 1 to {MAX_STOP_CHARS} characters, got {shorten(s)}"
            )
    return list(stops)


def next_tokens(
    logits: torch.Tensor, rows: list[Sampling], generators: list[torch.Generator | None]
) -> list[int]:
    """(B, V) logits -> one token id per row: argmax for greedy rows, else a draw."""
    chosen = logits.argmax(-1).tolist()  # B ids
    for i, params in enumerate(rows):
        if not params.greedy:
            probs = warp(logits[i].float(), params)  # (V,)
            chosen[i] = int(torch.multinomial(probs, 1, generator=generators[i]))
    return chosen


def warp(logits: torch.Tensor, params: Sampling) -> torch.Tensor:
    """(V,) logits -> (V,) probabilities after temperature, top-k and top-p; always a
    distribution multinomial accepts (finite, at least one token above 0)."""
    logits = logits.float().nan_to_num(nan=float("-inf"), posinf=torch.finfo(torch.float32).max)
    top = logits.max()
    if not torch.isfinite(top):  # every logit -inf (or NaN): the argmax, as greedy would
        return F.one_hot(logits.argmax(), logits.shape[-1]).float()
    # a temperature under float32's smallest normal would round to 0 (and 0 / 0 is NaN);
    # at that one every other token is -inf already (float64 is not on every device)
    temperature = max(params.temperature, torch.finfo(torch.float32).tiny)
    scores = (logits - top) / temperature  # (V,) <= 0, the likeliest exactly 0
    if params.top_k and params.top_k < scores.shape[-1]:
        kth = scores.topk(params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, index = scores.sort(descending=True)  # (V,)
        probs = ordered.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the likelier tokens
        drop = before >= params.top_p
        drop[0] = False  # the likeliest token always stays, whatever top_p rounds to
        scores = scores.masked_fill(drop.scatter(0, index, drop), float("-inf"))
    return scores.softmax(-1)


def token_logprobs(
    logits: torch.Tensor, params: Sampling, chosen: int, k: int
) -> tuple[int, float, list[tuple[int, float]]]:
    """(V,) logits -> (chosen id, its log-prob, the k likeliest (id, log-prob)), all from the
    distribution the token was drawn from: the model's own for a greedy row, the warped one
    (temperature, top-k, top-p) for a sampled row, so a cut-off token reads -inf."""
    if params.greedy:
        logp = logits.float().log_softmax(-1)  # (V,)
    else:
        logp = warp(logits, params).log()  # (V,)
    top = logp.topk(min(k, logp.shape[-1])) if k else None
    alternatives = (
        [] if top is None else list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
    )
    return chosen, float(logp[chosen]), alternatives


def find_stop(text: str, stops: list[str]) -> int:
    """Where the first stop sequence starts in `text` (-1: none)."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else -1


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could start a stop sequence, so a stream
    must not send them yet (a later token may complete the sequence)."""
    longest = 0
    for s in stops:
        for size in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:size]):
                longest = size
                break
    return longest
