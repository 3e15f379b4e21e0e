"""Bounds on what one HTTP request may cost, checked before the work they bound.

A request body is counted as it arrives: a declared `Content-Length` over the limit is
refused before a byte is read, and a body sent without one (chunked) is cut off as soon
as it passes the limit, so a 70 MB body never sits in memory to be parsed. What a client
sent is echoed in error messages only shortened (`shorten`): a 1 MB task name is not
sent back whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ECHO_CHARS = 60  # how much of a client's value an error message repeats


def shorten(value: Any, limit: int = ECHO_CHARS) -> str:
    """`repr(value)` cut to about `limit` characters, saying how long the whole was.
    repr also escapes lone surrogates, so the message is always valid UTF-8."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    text = repr(value)
    return text if len(text) <= limit + 2 else f"{text[:limit]}... ({len(text):,} characters)"


class BodyTooLarge(HTTPException):
    """A request body over the server's byte limit (HTTP 413)."""

    def __init__(self, limit: int, flag: str, declared: int | None = None) -> None:
        size = f"{declared:,} bytes" if declared is not None else "more bytes"
        super().__init__(
            413, f"request body of {size} is over the server's {limit:,}-byte limit ({flag})"
        )


class BodyLimit:
    """ASGI middleware: every request body bounded to `limit(path)` bytes while it is read.

    The check happens inside `receive`, so it runs when the endpoint reads the body (after
    routing, inside the app's error handlers: the 413 is an ordinary JSON error)."""

    def __init__(self, app: ASGIApp, *, limit: Callable[[str], int], flag: str) -> None:
        self.app, self.limit, self.flag = app, limit, flag  # limit: path -> bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit, flag = self.limit(path), self.flag
        declared = _content_length(scope)
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            if declared is not None and declared > limit:
                raise BodyTooLarge(limit, flag, declared)  # before reading any of it
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, flag)
            return message

        await self.app(scope, bounded, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None
