"""Continuous batching: requests that arrive while the engine decodes join the decode.

One `Session` answers groups of requests (a group: one HTTP request's inputs, answered
together). Classification inputs are answered in one pass as their group arrives; the
generation inputs decode together (serve/decoding.py). After every decoding step the
session asks `Arrivals` for groups that arrived meanwhile: their classification inputs
are answered at once, their generation inputs are prefilled (their own prompt prefix,
per row, as in any batch) and join the running batch at the next step, each with its
own cache rows, left-padded to the batch's cache width. A row's tokens depend only on
its own prompt, context and sampling, never on which rows share its steps or when it
joined. A group is settled as soon as its last input is done, not when the decode ends.
"""

from __future__ import annotations

from typing import Any, Protocol

from softprompt.data import Example
from softprompt.inject import RowPrompts
from softprompt.inject.decode import Decoded, Running
from softprompt.serve.decoding import Decoding, Packing, RowText
from softprompt.serve.requests import Request


class Group(Protocol):
    """Inputs answered together (one HTTP request's): `settle` gets their records, in
    order, once every one is done."""

    inputs: list[Request]

    def settle(self, answers: list[dict[str, Any]]) -> None: ...


class Arrivals(Protocol):
    """Where a running decode finds groups that arrived after it started."""

    def take(self, rows: int) -> list[Group]:
        """Groups waiting now that may join a decode of `rows` rows (none: [])."""
        ...


class Passes(Protocol):
    """The engine's passes a session runs (serve/engine.py `Engine`)."""

    backbone: Any

    def _classify(self, requests: list[Request]) -> list[dict[str, Any]]: ...

    def _generation_inputs(self, requests: list[Request]) -> tuple[Any, RowPrompts, Packing | None]:
        """The injector, each row's prompt, and what packed prefill needs (or None)."""
        ...


class Answered:
    """A group that keeps its answers (`Engine.run`'s one group)."""

    def __init__(self, inputs: list[Request]) -> None:
        self.inputs = inputs
        self.answers: list[dict[str, Any]] | None = None

    def settle(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers


class _Open:
    """A group being answered: its records so far, and how many inputs are left."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.records: list[dict[str, Any] | None] = [None] * len(group.inputs)
        self.left = len(group.inputs)

    def fill(self, place: int, record: dict[str, Any]) -> None:
        served = self.group.inputs[place].served
        self.records[place] = dict(record, task=served.task, version=served.entry.version)
        self.left -= 1
        if self.left == 0:
            self.group.settle(self.records)


class Session:
    """One engine call: the groups given, and those joining while their decode runs."""

    def __init__(self, engine: Passes, arrivals: Arrivals | None) -> None:
        self.engine, self.arrivals = engine, arrivals
        spec = engine.backbone.spec
        self.decoding: Decoding | None = None
        self._ids = (spec.pad_token_id, spec.eos_token_id)
        self.rows: list[tuple[_Open, int]] = []  # decoding row -> (its group, its place)

    def run(self, groups: list[Group]) -> None:
        """Answer `groups` (each settled when done) and every group that joins."""
        generate = self._open(groups)
        if not generate:
            return
        running, limits = self._prefill(generate)
        join = self._join if self.arrivals is not None else None
        self.decoding.run(running, limits, join=join, on_done=self._done)

    def _open(self, groups: list[Group]) -> list[tuple[_Open, int]]:
        """Answer the groups' classification inputs now (one pass for all); their
        generation inputs as (group, place), to decode."""
        opened = [_Open(g) for g in groups]
        classify = [(o, i) for o in opened for i, r in enumerate(o.group.inputs) if not _gen(r)]
        if classify:
            records = self.engine._classify([o.group.inputs[i] for o, i in classify])
            for (o, i), record in zip(classify, records, strict=True):
                o.fill(i, record)
        for o in opened:
            if not o.group.inputs:
                o.group.settle([])
        return [(o, i) for o in opened for i, r in enumerate(o.group.inputs) if _gen(r)]

    def _prefill(self, rows: list[tuple[_Open, int]]) -> tuple[Running, list[int]]:
        """The generation inputs `rows`, run up to their first token; their token limits."""
        requests = [o.group.inputs[i] for o, i in rows]
        injector, prompts, packed = self.engine._generation_inputs(requests)
        if self.decoding is None:
            pad_id, eos_id = self._ids
            self.decoding = Decoding(injector, pad_id=pad_id, eos_id=eos_id)
        contexts = [r.served.model.task.contexts([Example(r.text, "")])[0] for r in requests]
        texts = [RowText(r.served.model.task.decode, r.sampling.stop, r.on_token) for r in requests]
        sampling = [r.sampling for r in requests]
        running = self.decoding.prefill(prompts, contexts, sampling, texts, packed)
        self.rows += rows
        return running, [r.max_tokens for r in requests]

    def _join(self, going: int) -> tuple[Running, list[int]] | None:
        """Groups that arrived since the last step: generation rows to join, or None."""
        groups = self.arrivals.take(going)
        generate = self._open(groups) if groups else []
        return self._prefill(generate) if generate else None

    def _done(self, row: int, decoded: Decoded) -> None:
        opened, place = self.rows[row]
        text = self.decoding.texts[row]
        opened.fill(
            place,
            {
                "text": text.finish(decoded.tokens),
                "finish_reason": decoded.reason,
                "tokens": len(decoded.tokens),
                "logprobs": text.logprobs,  # empty unless the row's sampling asked for them
            },
        )


def _gen(request: Request) -> bool:
    return request.served.generates
