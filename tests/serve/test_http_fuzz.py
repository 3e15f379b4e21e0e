"""A fuzz of the HTTP surface (issue 17): every endpoint x every field x wrong types, empty,
huge and odd-Unicode values, sent as raw JSON; no answer may be a 5xx, and every 4xx
carries a short message. Fields come from the app's own body models, so a new field is
fuzzed without editing this test; a new endpoint fails the coverage test until it has a
valid body here."""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softprompt.serve.app import create_app

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# a valid body per JSON endpoint: the fuzz replaces one field at a time
VALID: dict[str, dict[str, Any]] = {
    "/classify": {"inputs": [{"task": "movie", "text": "good movie"}]},
    "/generate": {"inputs": [{"task": "story", "text": "good", "max_tokens": 2}]},
    "/v1/completions": {"model": "story", "prompt": "good", "max_tokens": 2},
    "/v1/chat/completions": {
        "model": "story",
        "messages": [{"role": "user", "content": "good"}],
        "max_tokens": 2,
    },
}
ODD_TEXT = [
    "",
    " ",
    "\x00",
    "\ud800",  # a lone surrogate: valid JSON (as an escape), not UTF-8
    "\udfff x",
    "\ufeff\u202e\u200b",  # BOM, right-to-left override, zero width space
    "e\u0301" * 50,  # combining accents
    "\U0001f600" * 20,
    "\uffff",
    "a\nb\r\n\t",
    "{text}",
    "movie@1",
    "movie@0",
    "movie@99999999999999999999",
    "x" * 100_000,
]
WRONG = [
    None,
    True,
    0,
    -1,
    2**63,
    10**30,
    -(10**30),
    1e-320,
    1e308,
    float("nan"),
    float("inf"),
    [],
    [None],
    [1, "a"],
    ["x"] * 300,
    {},
    {"type": "text", "text": 5},
    [{"type": "text", "text": 5}],
    [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
    [[[[[[]]]]]],
]
VALUES = st.one_of(
    st.sampled_from(ODD_TEXT),
    st.sampled_from(WRONG),
    st.text(max_size=20),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(),
)
FUZZ = settings(
    max_examples=int(os.environ.get("SOFTPROMPT_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


def _fields(body: Any, model: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths to every field of `body` and of its pydantic `model` (optional ones too)."""
    paths = [prefix] if prefix else []
    if isinstance(body, dict):
        names = set(body) | set(getattr(model, "model_fields", {}))
        for name in sorted(names):
            sub = _submodel(model, name)
            paths += _fields(body.get(name), sub, (*prefix, name))
    elif isinstance(body, list) and body:
        paths += _fields(body[0], model, (*prefix, 0))
    return paths


def _submodel(model: Any, name: str) -> Any:
    """The pydantic model inside field `name` (through list[...] and X | None), if any."""
    field = getattr(model, "model_fields", {}).get(name)
    stack = [field.annotation] if field is not None else []
    while stack:
        hint = stack.pop()
        if hasattr(hint, "model_fields"):
            return hint
        stack += list(getattr(hint, "__args__", ()))
    return None


def _replaced(body: Any, path: tuple, value: Any) -> Any:
    """A copy of `body` with the field at `path` set to `value` (a missing one added)."""
    body = json.loads(json.dumps(body))
    if not path:
        return value
    holder = body
    for step in path[:-1]:
        holder = holder[step] if not isinstance(holder, dict) else holder.setdefault(step, {})
    holder[path[-1]] = value
    return body


def _models(app) -> dict[str, Any]:
    return {
        r.path: r.body_field.field_info.annotation if r.body_field is not None else None
        for r in app.routes
        if isinstance(r, APIRoute) and "POST" in r.methods
    }


@pytest.fixture
def fuzz_client(engine):
    """Admin on; a small token bound so a valid max_tokens of 1024 is refused, not run."""
    app = create_app(engine, admin_token=TOKEN, max_batch_tokens=256, max_body_bytes=1 << 20)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.app_models = _models(app)
        yield client


def _check(response) -> None:
    assert response.status_code < 500, response.text[:2000]
    if response.status_code >= 400 and response.status_code != 405:
        message = json.loads(response.content.decode("utf-8"))["error"]["message"]
        assert isinstance(message, str) and message and len(message) < 2000, message[:2000]


def test_the_fuzz_covers_every_endpoint(engine):
    posted = set(_models(create_app(engine)))
    assert posted == set(VALID) | {"/prompts"}
    paths = _fields(
        VALID["/v1/chat/completions"], _models(create_app(engine))["/v1/chat/completions"]
    )
    assert ("messages", 0, "content") in paths and ("max_completion_tokens",) in paths
    assert ("top_k",) in paths and ("stream",) in paths


@FUZZ
@given(data=st.data())
def test_json_endpoints_never_answer_5xx(fuzz_client, data):
    path = data.draw(st.sampled_from(sorted(VALID)))
    fields = _fields(VALID[path], fuzz_client.app_models[path])
    field = data.draw(st.sampled_from([(), *fields]))
    base = VALID[path]
    if path.startswith("/v1/") and data.draw(st.booleans()):
        base = dict(base, stream=True)  # a bad value must be refused before a stream starts
    body = _replaced(base, field, data.draw(VALUES))
    raw = json.dumps(body).encode()  # ensure_ascii: a lone surrogate travels as \\ud800
    response = fuzz_client.post(path, content=raw, headers={"Content-Type": "application/json"})
    _check(response)


@FUZZ
@given(name=st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=30)), data=st.binary(max_size=64))
def test_admin_endpoints_never_answer_5xx(fuzz_client, name, data):
    name = name.encode("utf-8", "surrogatepass").decode("utf-8", "replace")[:2000]  # a URL
    _check(fuzz_client.post(f"/prompts?task={quote(name)}", content=data, headers=AUTH))
    _check(fuzz_client.delete(f"/prompts/{quote(name, safe='')}", headers=AUTH))
    for path in ("/tasks", "/health", "/metrics", "/v1/models"):
        _check(fuzz_client.get(f"{path}?q={quote(name)}"))
