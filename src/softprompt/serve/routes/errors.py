"""Error answers and the request middleware every route shares.

Every error is OpenAI's `{"error": {"message", "type", "code"}}` body, whatever raised it
(a route's `ApiError`, a `SoftPromptError` from the engine or store, FastAPI's body
validation, an unknown path, an unexpected exception), and every answer, error or not,
is counted in `softprompt_requests_total`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from softprompt.errors import SoftPromptError
from softprompt.serve.engine import BadInput, RefusedTask, UnknownTask
from softprompt.serve.images import ImageTooLarge
from softprompt.serve.metrics import Metrics
from softprompt.serve.store import StoreFileChanged, StoreWriteError
from softprompt.serve.vllm import NotForVllm, VllmError, VllmUnavailable

MAX_MESSAGE = 1000  # characters of an error message (the middle of a longer one is cut)


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class ErrorBody(BaseModel):
    """Every error answer's body (OpenAI's shape), whatever the status."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": what}
    for status, what in {
        400: "A field's value is not served (the message names it)",
        404: "Unknown task or version",
        413: "Request or input too large",
        422: "The body is not the endpoint's JSON shape",
        500: "Unexpected server error",
    }.items()
}


class ApiError(Exception):
    """A route's refusal: `status` and a message naming the field and the fix."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def status_of(exc: SoftPromptError) -> int:
    """The HTTP status of an engine, store or vLLM error."""
    if isinstance(exc, UnknownTask):
        return 404
    if isinstance(exc, RefusedTask | NotForVllm | StoreFileChanged):
        return 409
    if isinstance(exc, VllmUnavailable):
        return 503  # vLLM down or restarting: retry later, never another engine's answer
    if isinstance(exc, StoreWriteError):
        return 507  # the store's disk is full or read-only
    if isinstance(exc, VllmError):
        return 400
    if isinstance(exc, ImageTooLarge):
        return 413
    if isinstance(exc, BadInput) and "too long" in str(exc):
        return 413
    return 400


def error(
    metrics: Metrics, status: int, message: str, kind: str = "invalid_request_error"
) -> JSONResponse:
    """The error body, counted; a long message (one echoing a client's value) is cut."""
    metrics.count("softprompt_errors_total", status=str(status))
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
    if len(message) > MAX_MESSAGE:  # whatever echoed a client's value: not all of it back
        message = f"{message[: MAX_MESSAGE // 2]} ... {message[-MAX_MESSAGE // 4 :]}"
    body = {"error": {"message": message, "type": kind, "code": status}}
    return JSONResponse(body, status_code=status)


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error(_metrics(request), exc.status, exc.message, exc.kind)


async def _soft_error(request: Request, exc: SoftPromptError) -> JSONResponse:
    return error(_metrics(request), status_of(exc), str(exc))


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
    ]
    return error(_metrics(request), 422, "; ".join(problems[:5]) or "invalid request body")


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error(_metrics(request), exc.status_code, str(exc.detail))


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    _metrics(request).count("softprompt_internal_errors_total")
    message = f"internal error ({type(exc).__name__}); see the server log"
    return error(_metrics(request), 500, message, "server_error")


async def _observe(request: Request, call_next: Callable) -> Any:
    """Count every answer by route and status, and time it."""
    started = time.perf_counter()
    status = 500  # an unexpected error escapes call_next: the 500 it becomes counts too
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        path = getattr(request.scope.get("route"), "path", "unmatched")
        metrics = _metrics(request)
        metrics.count("softprompt_requests_total", path=path, status=str(status))
        metrics.observe("softprompt_request_seconds", time.perf_counter() - started)


def install(app: FastAPI) -> None:
    """Add the error handlers and the counting middleware to `app` (its `state.metrics`)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(SoftPromptError, _soft_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _internal)
    app.middleware("http")(_observe)
