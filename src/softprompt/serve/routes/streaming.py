"""OpenAI server-sent events: one chunk per new piece of text, then each choice's finish,
then (with `stream_options.include_usage`) a chunk with no choices and the usage, then
`[DONE]`. Every input is checked before the stream starts, so a bad one is still a 4xx."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from softprompt.serve.engine import Request as Input
from softprompt.serve.routes.formatting import usage
from softprompt.serve.routes.state import ServeState
from softprompt.serve.sampling import Sampling


class _Chunks:
    """The stream's chunk texts, for one request id and object kind."""

    def __init__(self, ident: str, task: str, chat: bool) -> None:
        self.ident, self.task, self.chat = ident, task, chat
        self.kind = "chat.completion.chunk" if chat else "text_completion"
        self.created = int(time.time())

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": self.ident, "object": self.kind, "created": self.created, "model": self.task}
        return f"data: {json.dumps(dict(body, choices=choices, **extra))}\n\n"

    def event(self, index: int, text: str | None, reason: str | None) -> str:
        if self.chat:
            delta = {"content": text} if text is not None else {}
            return self.chunk([{"index": index, "delta": delta, "finish_reason": reason}])
        return self.chunk([{"index": index, "text": text or "", "finish_reason": reason}])

    def role(self, index: int) -> str:
        """Chat's first chunk per choice: the assistant role and empty content."""
        delta = {"role": "assistant", "content": ""}
        return self.chunk([{"index": index, "delta": delta, "finish_reason": None}])


async def _events(
    state: ServeState,
    requests: list[Input],
    pieces: asyncio.Queue,
    chunks: _Chunks,
    include_usage: bool,
) -> AsyncIterator[str]:
    job = asyncio.ensure_future(state.batcher.submit(requests))
    if chunks.chat:
        for i in range(len(requests)):
            yield chunks.role(i)
    while not (job.done() and pieces.empty()):
        getter = asyncio.ensure_future(pieces.get())
        await asyncio.wait({getter, job}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            index, piece = getter.result()
            yield chunks.event(index, piece, None)
        else:
            getter.cancel()
    try:
        results = job.result()
    except Exception as exc:  # noqa: BLE001 - the stream has started: report in-band
        message = {"error": {"message": str(exc), "type": "server_error"}}
        yield f"data: {json.dumps(message)}\n\n"
        return
    for i, r in enumerate(results):
        if "label" in r:  # a classification task answers with its label
            yield chunks.event(i, r["label"], None)
        yield chunks.event(i, None, r.get("finish_reason", "stop"))
    if include_usage:
        yield chunks.chunk([], usage=usage(state, requests, results))
    yield "data: [DONE]\n\n"


def stream(
    state: ServeState,
    task: str,
    rows: list[tuple[str, Sampling]],
    limit: int | None,
    ident: str,
    chat: bool,
    include_usage: bool,
) -> StreamingResponse:
    """The streamed answer to `rows` (text, sampling) of `task`."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()

    def pusher(index: int) -> Callable[[str], None]:
        return lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, (index, piece))

    requests = state.bounded(
        (
            state.engine.request(
                task, text, generate=None, max_tokens=limit, on_token=pusher(i), sampling=params
            )
            for i, (text, params) in enumerate(rows)
        ),
        len(rows),
    )  # checked here: a bad input is a 4xx before the stream starts
    events = _events(state, requests, pieces, _Chunks(ident, task, chat), include_usage)
    return StreamingResponse(events, media_type="text/event-stream")
