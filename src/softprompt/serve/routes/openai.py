"""OpenAI-compatible endpoints: `model` names the task (as vLLM and LoRAX name adapters),
so an OpenAI client works unchanged; `task@version` pins a stored version."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

from fastapi import APIRouter

from softprompt.serve.engine import check_unicode
from softprompt.serve.routes.bodies import (
    MAX_LOGPROBS,
    MAX_N,
    ChatBody,
    CompletionBody,
    StreamOptions,
    _OpenAIBody,
    refuse_unimplemented,
)
from softprompt.serve.routes.errors import ApiError
from softprompt.serve.routes.formatting import choice, usage
from softprompt.serve.routes.state import MAX_INPUTS, MAX_NEW_TOKENS, ServeState, State
from softprompt.serve.routes.streaming import stream
from softprompt.serve.sampling import MAX_SEED, Sampling
from softprompt.tasks.chat import ROLES, Conversation

router = APIRouter()


def _check_logprobs(body: _OpenAIBody, served: Any) -> int | None:
    """The log-prob alternatives asked for, refused where they cannot be given."""
    top = body.top_k_logprobs()
    if top is None:
        return None
    field = "logprobs" if isinstance(body, CompletionBody) else "top_logprobs"
    if not 0 <= top <= MAX_LOGPROBS:
        raise ApiError(400, f"{field} must be an integer from 0 to {MAX_LOGPROBS}, got {top}")
    if not served.generates:
        raise ApiError(
            400,
            f"logprobs: task {served.entry.ref} is a classification task; its answer is "
            "a label and each choice carries the labels' `scores` instead",
        )
    if served.engine != "own":
        raise ApiError(
            400,
            f"logprobs: task {served.entry.ref} runs on {served.engine}, which does "
            "not return them here; leave the field out",
        )
    if body.stream:
        raise ApiError(400, "logprobs: not given in a stream; send stream: false for them")
    return top


def check_openai(
    state: ServeState, body: _OpenAIBody, max_tokens: tuple[str, int | None]
) -> tuple[int | None, int | None]:
    """The generation limit and the log-prob alternatives asked for. The limit is
    `max_tokens` (or chat's `max_completion_tokens`) as given, 16 when absent (OpenAI's
    completions default); 0 is refused, as OpenAI does (the old `echo` use is not
    served). Fields the server does not implement are refused before any work."""
    refuse_unimplemented(body)
    if not 1 <= body.n <= MAX_N:
        raise ApiError(400, f"n must be an integer from 1 to {MAX_N}, got {body.n}")
    served = state.engine.get(body.model)
    top = _check_logprobs(body, served)
    if not served.generates:
        return None, top
    name, value = max_tokens
    if value is None:
        return 16, top
    if not 1 <= value <= MAX_NEW_TOKENS:
        raise ApiError(400, f"{name} must be an integer from 1 to {MAX_NEW_TOKENS}, got {value}")
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


async def openai_answer(
    state: ServeState,
    body: _OpenAIBody,
    texts: list[str],
    max_tokens: tuple[str, int | None],
    chat: bool,
) -> Any:
    """Completions and chat alike: `texts` x `n` rows, answered whole or streamed."""
    limit, top = check_openai(state, body, max_tokens)
    params = replace(state.sampling(body), logprobs=top)
    rows = copies(texts, body.n, params)
    if len(rows) > MAX_INPUTS:
        raise ApiError(400, f"n: prompts x n come to {len(rows)}; at most {MAX_INPUTS}")
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    if body.stream:
        options = body.stream_options or StreamOptions()
        return stream(state, body.model, rows, limit, ident, chat, options.include_usage)
    requests = state.bounded(
        (
            state.engine.request(body.model, t, generate=None, max_tokens=limit, sampling=s)
            for t, s in rows
        ),
        len(rows),
    )
    results = await state.batcher.submit(requests)
    return {
        "id": ident,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": body.model,
        "system_fingerprint": f"{results[0]['task']}@{results[0]['version']}",
        "choices": [choice(state, i, r, chat, top) for i, r in enumerate(results)],
        "usage": usage(state, requests, results),
    }


@router.post("/v1/completions")
async def completions(body: CompletionBody, state: State) -> Any:
    """OpenAI completions; `model` names the task, `prompt` is the input text(s)."""
    texts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not texts or len(texts) > MAX_INPUTS:
        raise ApiError(400, f"prompt: give 1 to {MAX_INPUTS} texts")
    return await openai_answer(state, body, texts, ("max_tokens", body.max_tokens), chat=False)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatBody, state: State) -> Any:
    """OpenAI chat. A task trained with `task.chat_template` keeps the conversation: every
    message, rendered by the backbone's chat template, is its input; any other task frames
    one text with its template, the last user message."""
    users = [i for i, m in enumerate(body.messages) if m.role == "user"]
    if not users:
        raise ApiError(400, "messages: need at least one message with role 'user'")
    task = state.engine.get(body.model).model.task
    if getattr(task.config, "chat_template", False):
        content: str = conversation(task, body)
    else:
        content = chat_text(body.messages[users[-1]].content, f"messages[{users[-1]}].content")
    if body.max_completion_tokens is not None:  # 0 is a value, not a missing one
        limit = ("max_completion_tokens", body.max_completion_tokens)
    else:
        limit = ("max_tokens", body.max_tokens)
    return await openai_answer(state, body, [content], limit, chat=True)


def conversation(task: Any, body: ChatBody) -> Conversation:
    """Every message rendered by the chat template the task was trained inside, ending with
    the assistant's header (`developer` is read as `system`, as older templates know it)."""
    messages = []
    for i, m in enumerate(body.messages):
        if m.role not in ROLES:
            raise ApiError(
                400,
                f"messages[{i}].role: {m.role!r} is not served (a task calls no tools); "
                f"use one of {list(ROLES)}",
            )
        role = "system" if m.role == "developer" else m.role
        messages.append({"role": role, "content": chat_text(m.content, f"messages[{i}].content")})
    if messages[-1]["role"] != "user":
        raise ApiError(
            400,
            f"messages[{len(messages) - 1}]: the last message must have role 'user' "
            "(the turn the task answers)",
        )
    return task.conversation(messages)


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


def model_card(state: ServeState, name: str, served: Any) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": int(served.entry.added),
        "owned_by": "softprompt",
        "root": state.engine.backbone.name,
    }


@router.get("/v1/models")
async def models(state: State) -> dict[str, Any]:
    """Each served task by name (`task@version`, which pins the version, is a model
    name too: GET /v1/models/{task@version})."""
    data = [model_card(state, task, s) for task, s in sorted(state.engine.tasks.items())]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id}")
async def model(model_id: str, state: State) -> dict[str, Any]:
    """One served task, named `task` or `task@version` (404 when not served)."""
    return model_card(state, model_id, state.engine.get(model_id))
