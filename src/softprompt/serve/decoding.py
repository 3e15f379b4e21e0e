"""Mixed generation batches on the one decoding loop (`inject.decode`): each row with its
own sampling parameters, token limit and stop sequences, streaming its text as it grows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from softprompt.inject import RowPrompts
from softprompt.inject.decode import decode as inject_decode
from softprompt.inject.decode import decode_packed
from softprompt.serve.sampling import (
    Sampling,
    find_stop,
    held_back,
    next_tokens,
    token_logprobs,
)


class RowText:
    """One generating row's text as its tokens arrive: where a stop sequence cuts it, and
    the new text since the last call for a stream. A stream holds back an ending that
    could still grow into a stop sequence, and half of a multi-byte character."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        stops: list[str],
        on_token: Callable[[str], None] | None,
    ) -> None:
        self.decode, self.stops, self.on_token = decode, stops, on_token
        self.sent = ""
        self.cut: str | None = None  # the text before the first stop sequence
        # per generated token, when the row asked for log-probs: (id, log-prob, alternatives)
        self.logprobs: list[tuple[int, float, list[tuple[int, float]]]] = []

    def push(self, tokens: list[int]) -> bool:
        """After each new token: True when a stop sequence has appeared (the row is done)."""
        if not self.stops and self.on_token is None:
            return False
        text = self.decode(tokens)
        if self.stops:
            at = find_stop(text, self.stops)
            if at >= 0:
                self.cut = text[:at]
                return True
        if self.on_token is not None and not text.endswith("\ufffd"):
            self._send(text[: len(text) - held_back(text, self.stops)])
        return False

    def finish(self, tokens: list[int]) -> str:
        """The row's final text; a stream gets whatever it has not been sent yet."""
        text = self.cut if self.cut is not None else self.decode(tokens)
        if self.on_token is not None:
            self._send(text)
        return text

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.on_token(text[len(self.sent) :])
            self.sent = text


def decode(
    injector,
    prompts: RowPrompts,
    contexts: list[list[int]],
    *,
    pad_id: int,
    eos_id: int | None,
    max_new_tokens: list[int],
    sampling: list[Sampling] | None = None,
    texts: list[RowText] | None = None,
    packed: Packing | None = None,
) -> list[tuple[list[int], str]]:
    """The one decoding loop (`inject.decode`), each row with its own sampling parameters
    and random stream, and why each row stopped: "stop" at EOS or a stop sequence
    (`texts` watch for those and stream), "length" at its token limit. With `packed`
    the contexts run packed end to end, without padding (`inject.decode.decode_packed`),
    where that costs less than padding them."""
    sampling = sampling or [Sampling() for _ in contexts]
    generators = [s.generator(injector.device) for s in sampling]

    def choose(logits: torch.Tensor, rows: list[int]) -> list[int]:  # (b, V) -> b ids
        return next_tokens(logits, [sampling[i] for i in rows], [generators[i] for i in rows])

    def on_token(i: int, tokens: list[int], logits: torch.Tensor) -> bool:
        if sampling[i].logprobs is not None:
            texts[i].logprobs.append(
                token_logprobs(logits, sampling[i], tokens[-1], sampling[i].logprobs)
            )
        return texts[i].push(tokens)

    options = {
        "pad_id": pad_id,
        "max_new_tokens": max_new_tokens,
        "stop_ids": () if eos_id is None else (eos_id,),
        "choose": choose,
        "on_token": on_token if texts is not None else None,
    }
    rows = None
    if packed is not None:
        rows = decode_packed(
            injector, packed.cached, packed.choice, contexts, capacity=packed.capacity, **options
        )
    if rows is None:
        rows = inject_decode(injector, prompts, contexts, **options)
    return [(row.tokens, row.reason) for row in rows]


@dataclass
class Packing:
    """What packed decoding needs: each distinct prompt's cached K/V and width, each
    row's prompt, and the packed row width."""

    cached: list[tuple[list[tuple[torch.Tensor, torch.Tensor]], int]]
    choice: list[int]
    capacity: int
