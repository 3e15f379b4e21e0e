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

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from swagger_ui_bundle import swagger_ui_path

from softprompt.errors import SoftPromptError
from softprompt.serve.batcher import Batcher
from softprompt.serve.engine import BadInput, Engine, RefusedTask, UnknownTask, check_unicode
from softprompt.serve.engine import Request as Input
from softprompt.serve.images import ImageTooLarge, decode_image
from softprompt.serve.injector import CachedPrompt
from softprompt.serve.limits import BodyLimit
from softprompt.serve.metrics import Metrics
from softprompt.serve.sampling import MAX_SEED, Sampling, check_sampling
from softprompt.serve.store import StoreError, StoreFileChanged, StoreWriteError
from softprompt.serve.vllm import NotForVllm, VllmError, VllmUnavailable

MAX_INPUTS = 256  # inputs per request
TokenLogprobs = tuple[int, float, list[tuple[int, float]]]  # id, log-prob, top (id, lp)
MAX_NEW_TOKENS = 1024  # as engine.request checks
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
DOCS_ASSETS = "/docs-assets"  # Swagger UI's files, served from the swagger-ui-bundle package


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassifyInput(_Body):
    """`text` for a text task, `image` (base64 PNG/JPEG, or a data: URL) for an image task."""

    task: str
    text: str | None = None
    image: str | None = None


class ClassifyBody(_Body):
    inputs: list[ClassifyInput] = Field(min_length=1, max_length=MAX_INPUTS)


class SamplingFields(BaseModel):
    """Generation only; defaults: greedy (temperature 0), no top-k/top-p cut, no stop."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None


class GenerateInput(_Body, SamplingFields):
    task: str
    text: str
    max_tokens: int | None = None


class GenerateBody(_Body):
    inputs: list[GenerateInput] = Field(min_length=1, max_length=MAX_INPUTS)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _OpenAIBody(SamplingFields):
    # other fields are kept to be checked: one the server does not implement is a 400
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1

    def top_k_logprobs(self) -> int | None:
        """How many alternatives to return per token (None: no log-probs asked for)."""
        raise NotImplementedError


class CompletionBody(_OpenAIBody):
    prompt: str | list[str]
    logprobs: int | None = None  # completions: the number of alternatives (0 to 20)

    def top_k_logprobs(self) -> int | None:
        return self.logprobs


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatBody(_OpenAIBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def top_k_logprobs(self) -> int | None:
        if not self.logprobs:
            if self.top_logprobs:
                raise ApiError(400, "top_logprobs: needs logprobs: true")
            return None
        return self.top_logprobs or 0


MAX_LOGPROBS = 20  # alternatives per token, as OpenAI's top_logprobs
MAX_N = 16  # choices per prompt
# OpenAI fields that change nothing a prompt server answers: accepted and not used
INFORMATIONAL = {"user", "metadata", "store", "service_tier", "safety_identifier"}
# OpenAI fields whose default value asks for nothing: accepted at that value only
DEFAULTS: dict[str, Any] = {
    "echo": False,
    "best_of": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": {},
    "suffix": None,
    "tools": [],
    "functions": [],
    "parallel_tool_calls": None,
}
WHY = {
    "echo": "the prompt is not returned with the completion",
    "tools": "a task answers with its trained prompt and calls no tools",
    "tool_choice": "a task answers with its trained prompt and calls no tools",
    "functions": "a task answers with its trained prompt and calls no functions",
    "function_call": "a task answers with its trained prompt and calls no functions",
    "response_format": "output is not constrained to a format or JSON schema",
}


def refuse_unimplemented(body: _OpenAIBody) -> None:
    """A 400 naming the first field this server would otherwise ignore: a client that asks
    for `echo`, `tools` or `response_format` must learn it did not get them."""
    for name, value in (body.model_extra or {}).items():
        if name in INFORMATIONAL or value is None:
            continue
        if name in DEFAULTS and value == DEFAULTS[name]:
            continue
        why = WHY.get(name, "this server does not implement it")
        raise ApiError(400, f"{name}: not supported ({why}); leave the field out")


def _finite(logprob: float) -> float:
    """A log-prob JSON can carry: a token the sampler had cut off (-inf) reads -9999.0,
    as vLLM writes it."""
    return max(logprob, -9999.0)


def _status(exc: SoftPromptError) -> int:
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


def serve_docs(app: FastAPI) -> None:
    """/docs with Swagger UI's script and style from this machine, not a CDN: the page
    works on a machine without internet access."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )


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
    request_limit = max_batch_tokens if max_request_tokens is None else max_request_tokens
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
    serve_docs(app)
    app.add_middleware(
        BodyLimit,
        limit=lambda path: max_upload_bytes if path == "/prompts" else body_limit,
        flag="--max-upload-mb",
    )
    app.state.engine, app.state.metrics, app.state.batcher = engine, metrics, batcher

    # -- errors: always a 4xx with a message for what the client sent ------------------
    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        metrics.count("softprompt_errors_total", status=str(status))
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
        if len(message) > MAX_MESSAGE:  # whatever echoed a client's value: not all of it back
            message = f"{message[: MAX_MESSAGE // 2]} ... {message[-MAX_MESSAGE // 4 :]}"
        body = {"error": {"message": message, "type": kind, "code": status}}
        return JSONResponse(body, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.message, exc.kind)

    @app.exception_handler(SoftPromptError)
    async def _soft_error(request: Request, exc: SoftPromptError) -> JSONResponse:
        return error(_status(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        ]
        return error(422, "; ".join(problems[:5]) or "invalid request body")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        metrics.count("softprompt_internal_errors_total")
        return error(
            500, f"internal error ({type(exc).__name__}); see the server log", "server_error"
        )

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable) -> Any:
        started = time.perf_counter()
        status = 500  # an unexpected error escapes call_next: the 500 it becomes counts too
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            path = getattr(request.scope.get("route"), "path", "unmatched")
            metrics.count("softprompt_requests_total", path=path, status=str(status))
            metrics.observe("softprompt_request_seconds", time.perf_counter() - started)

    # -- answering -------------------------------------------------------------------
    vocab = None if engine.backbone.spec.kind == "vision" else len(engine.backbone.tokenizer)

    def sampling(fields: SamplingFields) -> Sampling:
        return check_sampling(
            fields.temperature, fields.top_p, fields.top_k, fields.seed, fields.stop, vocab=vocab
        )

    def bounded(inputs: Iterable[Input], count: int) -> list[Input]:
        """The request's `count` inputs, checked as each is built (tokenized): the first
        that takes the request past the per-request token bound refuses it, so an
        oversized request is not even tokenized whole."""
        taken, cost = [], 0
        for request in inputs:
            taken.append(request)
            cost += request.tokens + (request.max_tokens or 0)
            if cost > request_limit:
                raise ApiError(
                    413,
                    f"request too large: the first {len(taken)} of its {count} inputs come to "
                    f"{cost:,} tokens (template tokens, plus max_tokens for generation) and the "
                    f"server takes at most {request_limit:,} per request (--max-batch-tokens); "
                    "send fewer or shorter inputs per request, or raise the flag",
                )
        return taken

    async def answer(pairs: list[tuple[str, str, int | None, Sampling]], generate: bool | None):
        requests = (
            engine.request(t, x, generate=generate, max_tokens=m, sampling=s)
            for t, x, m, s in pairs
        )
        return await batcher.submit(bounded(requests, len(pairs)))

    def classify_request(item: ClassifyInput):
        image = None
        if item.image is not None:
            served = engine.get(item.task)  # an unknown task is named before the image
            if not served.takes_images:
                raise BadInput(
                    f"task {served.entry.ref} takes text, not an image; send "
                    '{"task": ..., "text": ...}'
                )
            image = decode_image(item.image, max_bytes=max_image_bytes, max_pixels=max_image_pixels)
        return engine.request(item.task, item.text, generate=False, image=image)

    @app.post("/classify")
    async def classify(body: ClassifyBody) -> dict[str, Any]:
        """Label each input with its task's prompt; inputs of several tasks share a batch.
        Image tasks take `image` (base64 PNG/JPEG) instead of `text`."""
        requests = bounded((classify_request(i) for i in body.inputs), len(body.inputs))
        return {"results": await batcher.submit(requests)}

    @app.post("/generate")
    async def generate(body: GenerateBody) -> dict[str, Any]:
        """Continuation of each input with its task's prompt (greedy unless a temperature is
        set; each input has its own sampling parameters and stop sequences)."""
        pairs = [(i.task, i.text, i.max_tokens, sampling(i)) for i in body.inputs]
        results = await answer(pairs, True)
        hidden = ("tokens", "logprobs")
        return {"results": [{k: v for k, v in r.items() if k not in hidden} for r in results]}

    # -- OpenAI-compatible -------------------------------------------------------------
    def check_openai(
        body: _OpenAIBody, max_tokens: tuple[str, int | None]
    ) -> tuple[int | None, int | None]:
        """The generation limit and the log-prob alternatives asked for. The limit is
        `max_tokens` (or chat's `max_completion_tokens`) as given, 16 when absent (OpenAI's
        completions default); 0 is refused, as OpenAI does (the old `echo` use is not
        served). Fields the server does not implement are refused before any work."""
        refuse_unimplemented(body)
        if not 1 <= body.n <= MAX_N:
            raise ApiError(400, f"n must be an integer from 1 to {MAX_N}, got {body.n}")
        served = engine.get(body.model)
        top = body.top_k_logprobs()
        field = "logprobs" if isinstance(body, CompletionBody) else "top_logprobs"
        if top is not None and not 0 <= top <= MAX_LOGPROBS:
            raise ApiError(400, f"{field} must be an integer from 0 to {MAX_LOGPROBS}, got {top}")
        if top is not None and not served.generates:
            raise ApiError(
                400,
                f"logprobs: task {served.entry.ref} is a classification task; its answer is "
                "a label and each choice carries the labels' `scores` instead",
            )
        if top is not None and served.engine != "own":
            raise ApiError(
                400,
                f"logprobs: task {served.entry.ref} runs on {served.engine}, which does "
                "not return them here; leave the field out",
            )
        if top is not None and body.stream:
            raise ApiError(400, "logprobs: not given in a stream; send stream: false for them")
        if not served.generates:
            return None, top
        name, value = max_tokens
        if value is None:
            return 16, top
        if not 1 <= value <= MAX_NEW_TOKENS:
            raise ApiError(
                400, f"{name} must be an integer from 1 to {MAX_NEW_TOKENS}, got {value}"
            )
        return value, top

    def copies(texts: list[str], n: int, params: Sampling) -> list[tuple[str, Sampling]]:
        """Each text n times (choice i * n + j is text i's j-th); a seeded request's copies
        take seeds seed, seed + 1, ... so they differ yet repeat."""
        rows = []
        for text in texts:
            for j in range(n):
                seed = None if params.seed is None else (params.seed + j) % (MAX_SEED + 1)
                rows.append((text, replace(params, seed=seed)))
        return rows

    in_front: dict[str, int] = {}  # task ref -> positions in front of each row's tokens

    def prefix_tokens(served: Any) -> int:
        """Positions before a row's own tokens: the prompt's virtual tokens (embedded and
        per-layer K/V), the template head a decoder caches with them, and BOS."""
        prompt = served.prompt
        if isinstance(prompt, CachedPrompt) and prompt.source is not None:
            with torch.no_grad():
                prompt = prompt.source()  # the real prompt: virtual tokens + template head
        elif prompt is None or isinstance(prompt, CachedPrompt):
            with torch.no_grad():
                prompt = served.model.prompt()
        spec = engine.backbone.spec  # a decoder's rows start with BOS, before the prompt
        return prompt.length + int(spec.kind == "causal-lm" and spec.bos_token_id is not None)

    def prompt_tokens(requests: list[Input]) -> int:
        """The tokens that ran before generation, summed over rows: what `prefix_tokens`
        counts and the row's filled template (the user's text inside it)."""
        total = 0
        for r in requests:
            ref = r.served.entry.ref
            if ref not in in_front:
                in_front[ref] = prefix_tokens(r.served)
            total += r.tokens + in_front[ref]
        return total

    def usage(requests: list[Input], results: list[dict[str, Any]]) -> dict[str, int]:
        prompt = prompt_tokens(requests)
        used = sum(r.get("tokens", 1) for r in results)
        return {"prompt_tokens": prompt, "completion_tokens": used, "total_tokens": prompt + used}

    async def openai_answer(
        body: _OpenAIBody, texts: list[str], max_tokens: tuple[str, int | None], chat: bool
    ) -> Any:
        limit, top = check_openai(body, max_tokens)
        params = replace(sampling(body), logprobs=top)
        rows = copies(texts, body.n, params)
        if len(rows) > MAX_INPUTS:
            raise ApiError(400, f"n: prompts x n come to {len(rows)}; at most {MAX_INPUTS}")
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if body.stream:
            options = body.stream_options or StreamOptions()
            return await stream(body.model, rows, limit, ident, chat, options.include_usage)
        requests = bounded(
            (
                engine.request(body.model, t, generate=None, max_tokens=limit, sampling=s)
                for t, s in rows
            ),
            len(rows),
        )
        results = await batcher.submit(requests)
        choices = [choice(i, r, chat, top) for i, r in enumerate(results)]
        return {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.model,
            "system_fingerprint": f"{results[0]['task']}@{results[0]['version']}",
            "choices": choices,
            "usage": usage(requests, results),
        }

    def choice(index: int, r: dict[str, Any], chat: bool, top: int | None) -> dict[str, Any]:
        text = r.get("text", r.get("label"))
        reason = r.get("finish_reason", "stop")
        if chat:
            message = {"role": "assistant", "content": text}
            out = {"index": index, "message": message, "finish_reason": reason}
            out["logprobs"] = None if top is None else chat_logprobs(r.get("logprobs", []), text)
        else:
            out = {"index": index, "text": text, "finish_reason": reason}
            logprobs = r.get("logprobs", [])
            out["logprobs"] = None if top is None else completion_logprobs(logprobs, text)
        if "scores" in r:
            out["scores"] = r["scores"]
        return out

    def spelled(
        rows: list[TokenLogprobs], answer: str
    ) -> list[tuple[str, float, list[tuple[str, float]]]]:
        """Each generated token as the text it adds after the tokens before it (a lone
        token decodes without its leading space on SentencePiece tokenizers), and each
        alternative as the text it would have added there. Tokens after the `answer` ends
        (those a stop sequence cut off) are left out."""
        decode = engine.backbone.tokenizer.decode
        ids: list[int] = []
        before = ""

        def piece(token: int) -> str:
            text = decode([*ids, token])
            return text[len(before) :] if text.startswith(before) else decode([token])

        out = []
        for token, logprob, alternatives in rows:
            if len(before) >= len(answer):
                break
            others = [(piece(a), _finite(lp)) for a, lp in alternatives]
            out.append((piece(token), _finite(logprob), others))
            ids.append(token)
            before = decode(ids)
        return out

    def completion_logprobs(rows: list[TokenLogprobs], answer: str) -> dict[str, Any]:
        """OpenAI completions' shape: tokens, their log-probs, the top alternatives as
        {token: log-prob}, and each token's offset in the text."""
        tokens = spelled(rows, answer)
        offsets = [sum(len(t) for t, _, _ in tokens[:i]) for i in range(len(tokens))]
        return {
            "tokens": [t for t, _, _ in tokens],
            "token_logprobs": [lp for _, lp, _ in tokens],
            "top_logprobs": [dict(alternatives) for _, _, alternatives in tokens],
            "text_offset": offsets,
        }

    def chat_logprobs(rows: list[TokenLogprobs], answer: str) -> dict[str, Any]:
        """OpenAI chat's shape: per token its text, log-prob, UTF-8 bytes and alternatives."""

        def item(text: str, logprob: float) -> dict[str, Any]:
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        content = [
            dict(item(t, lp), top_logprobs=[item(a, alp) for a, alp in alternatives])
            for t, lp, alternatives in spelled(rows, answer)
        ]
        return {"content": content, "refusal": None}

    async def stream(
        task: str,
        rows: list[tuple[str, Sampling]],
        limit: int | None,
        ident: str,
        chat: bool,
        include_usage: bool,
    ):
        """Server-sent events: one chunk per new piece of text, then finish, then (when
        `stream_options.include_usage`) a chunk with no choices and the usage, then [DONE]."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def pusher(index: int) -> Callable[[str], None]:
            return lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, (index, piece))

        requests = bounded(
            (
                engine.request(
                    task, text, generate=None, max_tokens=limit, on_token=pusher(i), sampling=params
                )
                for i, (text, params) in enumerate(rows)
            ),
            len(rows),
        )  # checked here: a bad input is a 4xx before the stream starts
        kind = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            body = {"id": ident, "object": kind, "created": created, "model": task}
            return f"data: {json.dumps(dict(body, choices=choices, **extra))}\n\n"

        def event(index: int, text: str | None, reason: str | None) -> str:
            if chat:
                delta = {"content": text} if text is not None else {}
                return chunk([{"index": index, "delta": delta, "finish_reason": reason}])
            return chunk([{"index": index, "text": text or "", "finish_reason": reason}])

        async def events() -> AsyncIterator[str]:
            job = asyncio.ensure_future(batcher.submit(requests))
            if chat:
                for i in range(len(rows)):
                    yield event(i, "", None).replace(
                        '"content": ""', '"role": "assistant", "content": ""'
                    )
            while not (job.done() and pieces.empty()):
                getter = asyncio.ensure_future(pieces.get())
                await asyncio.wait({getter, job}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    index, piece = getter.result()
                    yield event(index, piece, None)
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
                    yield event(i, r["label"], None)
                yield event(i, None, r.get("finish_reason", "stop"))
            if include_usage:
                yield chunk([], usage=usage(requests, results))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(body: CompletionBody) -> Any:
        """OpenAI completions; `model` names the task, `prompt` is the input text(s)."""
        texts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not texts or len(texts) > MAX_INPUTS:
            raise ApiError(400, f"prompt: give 1 to {MAX_INPUTS} texts")
        return await openai_answer(body, texts, ("max_tokens", body.max_tokens), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody) -> Any:
        """OpenAI chat; the last user message is the input the task's template frames."""
        users = [i for i, m in enumerate(body.messages) if m.role == "user"]
        if not users:
            raise ApiError(400, "messages: need at least one message with role 'user'")
        content = chat_text(body.messages[users[-1]].content, f"messages[{users[-1]}].content")
        if body.max_completion_tokens is not None:  # 0 is a value, not a missing one
            limit = ("max_completion_tokens", body.max_completion_tokens)
        else:
            limit = ("max_tokens", body.max_tokens)
        return await openai_answer(body, [content], limit, chat=True)

    def chat_text(content: str | list[dict[str, Any]] | None, where: str) -> str:
        """A message's text: a string, or its text parts joined (OpenAI's content parts;
        parts of other types, such as images, are not read by a text task)."""
        if not isinstance(content, list):
            return check_unicode(content or "", where)
        pieces = []
        for j, part in enumerate(content):
            if part.get("type") != "text":
                continue
            text = part.get("text")
            if not isinstance(text, str):
                raise ApiError(
                    400,
                    f"{where}[{j}].text must be a string (a text part is "
                    f'{{"type": "text", "text": "..."}}), got {type(text).__name__}',
                )
            pieces.append(check_unicode(text, f"{where}[{j}].text"))
        return "".join(pieces)

    def model_card(name: str, served: Any) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": int(served.entry.added),
            "owned_by": "softprompt",
            "root": engine.backbone.name,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """Each served task by name (`task@version`, which pins the version, is a model
        name too: GET /v1/models/{task@version})."""
        data = [model_card(task, s) for task, s in sorted(engine.tasks.items())]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict[str, Any]:
        """One served task, named `task` or `task@version` (404 when not served)."""
        return model_card(model_id, engine.get(model_id))

    # -- inspection --------------------------------------------------------------------
    @app.get("/tasks")
    async def tasks() -> dict[str, Any]:
        served = [s.describe() for _, s in sorted(engine.tasks.items())]
        return {"backbone": engine.backbone.name, "tasks": served, "refused": engine.refused}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "backbone": engine.backbone.name,
            "fingerprint": engine.backbone.fingerprint,
            "tasks": len(engine.tasks),
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_text() -> str:
        cache = engine.cache
        return metrics.render(
            {
                "softprompt_cache_hits": cache.hits,
                "softprompt_cache_misses": cache.misses,
                "softprompt_cache_evictions": cache.evictions,
                "softprompt_cache_invalidations": cache.invalidations,
                "softprompt_cache_bytes": cache.nbytes,
                "softprompt_cache_limit_bytes": cache.max_bytes,
                "softprompt_queue_waiting": batcher.waiting,
                "softprompt_tasks": len(engine.tasks),
            }
        )

    # -- admin: hot load / unload ------------------------------------------------------
    def authorize(request: Request) -> None:
        if not admin_token:
            raise ApiError(403, "admin endpoints are off; start the server with --admin-token")
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.encode(), admin_token.encode()
        ):
            raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")

    async def read_upload(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_upload_bytes:
            raise ApiError(
                413, f"upload of {declared} bytes is over the {max_upload_bytes}-byte limit"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_upload_bytes:
                raise ApiError(413, f"upload is over the {max_upload_bytes}-byte limit")
            chunks.append(chunk)
        if not size:
            raise ApiError(400, "empty upload: send the prompt file's bytes as the request body")
        return b"".join(chunks)

    @app.post("/prompts")
    async def upload(request: Request, task: str) -> dict[str, Any]:
        """Store an uploaded prompt file as TASK's next version and serve it at once."""
        authorize(request)
        data = await read_upload(request)
        served = await batcher.call(engine.install, task, data)
        return {"loaded": served.describe()}

    @app.delete("/prompts/{task}")
    async def unload(request: Request, task: str) -> dict[str, Any]:
        """Stop serving TASK and remove it from the store."""
        authorize(request)
        try:
            gone = await batcher.call(engine.remove, task)
        except (StoreWriteError, StoreFileChanged):
            raise  # 507 / 409 (`_status`): not a missing task
        except StoreError as exc:
            raise ApiError(404, str(exc)) from None
        return {"removed": [e.ref for e in gone]}

    return app
