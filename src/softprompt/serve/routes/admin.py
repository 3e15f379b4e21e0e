"""Hot load and unload of prompts: POST /prompts?task=T, DELETE /prompts/{task}.

Off unless the server was started with `--admin-token`; then every call needs
`Authorization: Bearer TOKEN` (compared in constant time)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request

from softprompt.serve.routes.errors import ApiError
from softprompt.serve.routes.state import ServeState, State
from softprompt.serve.store import StoreError, StoreFileChanged, StoreWriteError

router = APIRouter()


def authorize(state: ServeState, request: Request) -> None:
    """A 403 when admin is off, a 401 without the right bearer token."""
    token_wanted = state.admin_token
    if not token_wanted:
        raise ApiError(403, "admin endpoints are off; start the server with --admin-token")
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), token_wanted.encode()):
        raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")


async def read_upload(state: ServeState, request: Request) -> bytes:
    """The request body, refused (413) as soon as it passes the upload limit."""
    limit = state.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"upload of {declared} bytes is over the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"upload is over the {limit}-byte limit")
        chunks.append(chunk)
    if not size:
        raise ApiError(400, "empty upload: send the prompt file's bytes as the request body")
    return b"".join(chunks)


@router.post("/prompts")
async def upload(request: Request, task: str, state: State) -> dict[str, Any]:
    """Store an uploaded prompt file as TASK's next version and serve it at once."""
    authorize(state, request)
    data = await read_upload(state, request)
    served = await state.batcher.call(state.engine.install, task, data)
    return {"loaded": served.describe()}


@router.delete("/prompts/{task}")
async def unload(request: Request, task: str, state: State) -> dict[str, Any]:
    """Stop serving TASK and remove it from the store."""
    authorize(state, request)
    try:
        gone = await state.batcher.call(state.engine.remove, task)
    except (StoreWriteError, StoreFileChanged):
        raise  # 507 / 409 (`errors.status_of`): not a missing task
    except StoreError as exc:
        raise ApiError(404, str(exc)) from None
    return {"removed": [e.ref for e in gone]}
