"""Mixed generation batches on the one decoding loop (`inject.decode`): each row with its
own sampling parameters, token limit and stop sequences, streaming its text as it grows,
and rows joining while the loop runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from softprompt.inject import RowPrompts
from softprompt.inject.decode import Done, Join, Running, decode_from, prefill, prefill_packed
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


class Decoding:
    """Generation rows of many requests on the one decoding loop (`inject.decode`), each
    with its own sampling parameters, random stream and text watcher (`RowText`: stop
    sequences, streaming, log-probs). Rows may join while the loop runs (continuous
    batching): `prefill` numbers them after every row so far, as the loop does."""

    def __init__(self, injector, *, pad_id: int, eos_id: int | None) -> None:
        self.injector, self.pad_id = injector, pad_id
        self.stop_ids = () if eos_id is None else (eos_id,)
        self.sampling: list[Sampling] = []
        self.generators: list[torch.Generator | None] = []
        self.texts: list[RowText] = []

    def prefill(
        self,
        prompts: RowPrompts,
        contexts: list[list[int]],
        sampling: list[Sampling],
        texts: list[RowText],
        packed: Packing | None = None,
    ) -> Running:
        """The new rows run up to their first token; with `packed` the contexts run packed
        end to end, without padding (`inject.decode.prefill_packed`), where that costs
        less than padding them."""
        self.sampling += sampling
        self.generators += [s.generator(self.injector.device) for s in sampling]
        self.texts += texts
        running = None
        if packed is not None:
            running = prefill_packed(
                self.injector,
                packed.cached,
                packed.choice,
                contexts,
                capacity=packed.capacity,
                pad_id=self.pad_id,
            )
        if running is None:
            running = prefill(self.injector, prompts, contexts, self.pad_id)
        return running

    def run(
        self,
        running: Running,
        max_new_tokens: list[int],
        *,
        join: Join | None = None,
        on_done: Done | None = None,
    ) -> list[tuple[list[int], str]]:
        """Decode every row, and the rows `join` hands in; why each row stopped: "stop"
        at EOS or a stop sequence, "length" at its token limit."""
        rows = decode_from(
            self.injector,
            running,
            max_new_tokens=max_new_tokens,
            stop_ids=self.stop_ids,
            choose=self._choose,
            on_token=self._on_token,
            join=join,
            on_done=on_done,
        )
        return [(row.tokens, row.reason) for row in rows]

    def _choose(self, logits: torch.Tensor, rows: list[int]) -> list[int]:  # (b, V) -> b ids
        return next_tokens(
            logits, [self.sampling[i] for i in rows], [self.generators[i] for i in rows]
        )

    def _on_token(self, i: int, tokens: list[int], logits: torch.Tensor) -> bool:
        sampling = self.sampling[i]
        if sampling.logprobs is not None:
            self.texts[i].logprobs.append(
                token_logprobs(logits, sampling, tokens[-1], sampling.logprobs)
            )
        return self.texts[i].push(tokens)


@dataclass
class Packing:
    """What packed decoding needs: each distinct prompt's cached K/V and width, each
    row's prompt, and the packed row width."""

    cached: list[tuple[list[tuple[torch.Tensor, torch.Tensor]], int]]
    choice: list[int]
    capacity: int
