"""The HTTP server: mixed-task classification and generation over one frozen backbone.

Native endpoints take a list of inputs, each naming its task; OpenAI-compatible ones
name the task in `model` (as vLLM and LoRAX name adapters), so an OpenAI client works
unchanged. Every input is checked before it joins a batch (unknown task, wrong kind,
too long), so a bad request gets a 4xx with a message and never touches anyone else's
batch. Generation is greedy unless a request sets a temperature; `temperature`, `top_p`,
`top_k`, `seed`, `max_tokens` and `stop` are checked (serve/sampling.py) and a bad value
is a 400 naming the field. Classification ignores them (it answers with a label).

Every request is bounded before it costs anything: its body in bytes while it is read
(serve/limits.py), and its inputs' tokens together (inputs x template tokens, plus
`max_tokens` for generation) by `--max-batch-tokens`, so one request can neither hold
the model for minutes nor grow past what a batch may use. An unexpected error is a 500
that `softprompt_requests_total` counts like any other answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from softprompt.serve.batcher import Batcher
from softprompt.serve.engine import Engine
from softprompt.serve.limits import BodyLimit
from softprompt.serve.metrics import Metrics
from softprompt.serve.routes import admin, errors, native, observe, openai
from softprompt.serve.routes.errors import ERROR_RESPONSES, ApiError
from softprompt.serve.routes.errors import status_of as _status
from softprompt.serve.routes.state import MAX_INPUTS, ServeState

__all__ = ["MAX_INPUTS", "ApiError", "_status", "create_app"]


def create_app(
    engine: Engine,
    *,
    admin_token: str | None = None,
    max_wait_ms: float = 5.0,
    max_batch_tokens: int = 4096,
    max_batch_rows: int = 64,
    max_upload_bytes: int = 64 << 20,
    max_image_bytes: int = 4 << 20,
    max_image_pixels: int = 4096 * 4096,
    max_body_bytes: int | None = None,
    max_request_tokens: int | None = None,
) -> FastAPI:
    """The FastAPI app serving `engine`'s tasks (OpenAPI schema at /docs).

    `max_body_bytes` bounds a JSON request body (default: the upload limit, so one
    `--max-upload-mb` raises both); `max_request_tokens` bounds one request's inputs
    together (default: `max_batch_tokens`, so any request fits one batch)."""
    body_limit = max_upload_bytes if max_body_bytes is None else max_body_bytes
    metrics = Metrics()
    batcher = Batcher(
        engine,
        metrics,
        max_wait_ms=max_wait_ms,
        max_batch_tokens=max_batch_tokens,
        max_batch_rows=max_batch_rows,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="softprompt", lifespan=lifespan, docs_url=None, responses=ERROR_RESPONSES)
    observe.serve_docs(app)
    app.add_middleware(
        BodyLimit,
        limit=lambda path: max_upload_bytes if path == "/prompts" else body_limit,
        flag="--max-upload-mb",
    )
    app.state.engine, app.state.metrics, app.state.batcher = engine, metrics, batcher
    app.state.serve = ServeState(
        engine=engine,
        batcher=batcher,
        metrics=metrics,
        admin_token=admin_token,
        request_limit=max_batch_tokens if max_request_tokens is None else max_request_tokens,
        max_upload_bytes=max_upload_bytes,
        max_image_bytes=max_image_bytes,
        max_image_pixels=max_image_pixels,
    )
    errors.install(app)
    for routes in (native, openai, observe, admin):
        _add_routes(app, routes.router)
    return app


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """Each of `router`'s routes added to the app itself, so `app.routes` lists them
    (`include_router` keeps a router as one opaque entry in FastAPI 0.16x)."""
    for route in router.routes:
        assert isinstance(route, APIRoute)
        app.add_api_route(
            route.path,
            route.endpoint,
            methods=sorted(route.methods),
            response_class=route.response_class,
            name=route.name,
        )
