"""The server against a hostile client (issue 17): a removed version is never served
again, odd values get a 4xx (lone surrogates, wrong-typed content parts, extreme sampling
values), every request is bounded in tokens and in body bytes before it is parsed, and
error messages neither echo huge values nor misname the problem."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from softprompt.serve.app import create_app

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = "/v1/chat/completions"


@pytest.fixture
def client(engine):
    app = create_app(engine, admin_token=TOKEN)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def second_movie(llama, trained, tmp_path) -> bytes:
    """Another prompt for `movie` (different scores from the stored version 1)."""
    return trained(llama, "soft-prompt", 77).save(tmp_path / "v2.safetensors").read_bytes()


def _raw(client, path: str, text: str):
    """POST a JSON body written by hand (json= would refuse a lone surrogate)."""
    return client.post(path, content=text.encode(), headers={"Content-Type": "application/json"})


def _error(response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    assert all(f in message for f in fragments), message
    return message


def _classify(client, task: str, text: str = "good movie"):
    return client.post("/classify", json={"inputs": [{"task": task, "text": text}]})


# -- 1. a removed version is never served again ----------------------------------------
def test_deleting_the_served_version_serves_the_newest_left(client, engine, second_movie):
    v1 = _classify(client, "movie").json()["results"][0]
    assert client.post("/prompts?task=movie", content=second_movie, headers=AUTH).status_code == 200
    v2 = _classify(client, "movie").json()["results"][0]
    assert v2["version"] == 2 and v2["scores"] != v1["scores"]
    assert _classify(client, "movie@2").json()["results"][0]["version"] == 2  # pinned
    key = engine.tasks["movie"].prompt.key
    gone = client.delete("/prompts/movie@2", headers=AUTH)
    assert gone.status_code == 200 and gone.json() == {"removed": ["movie@2"]}
    _error(_classify(client, "movie@2"), 404, "serves version 1")
    after = _classify(client, "movie").json()["results"][0]
    assert after["version"] == 1 and after["scores"] == pytest.approx(v1["scores"], abs=1e-6)
    assert key not in engine.cache and engine.tasks["movie"].entry.version == 1
    models = client.get("/tasks").json()["tasks"]
    assert {t["task"]: t["version"] for t in models}["movie"] == 1


def test_deleting_an_older_version_keeps_the_served_one(client, engine, second_movie):
    client.post("/prompts?task=movie", content=second_movie, headers=AUTH)
    served = engine.tasks["movie"]
    assert client.delete("/prompts/movie@1", headers=AUTH).json() == {"removed": ["movie@1"]}
    assert engine.tasks["movie"] is served
    assert _classify(client, "movie").json()["results"][0]["version"] == 2
    _error(_classify(client, "movie@1"), 404, "serves version 2")


def test_deleting_the_last_version_stops_the_task(client):
    assert client.delete("/prompts/tweets@1", headers=AUTH).json() == {"removed": ["tweets@1"]}
    _error(_classify(client, "tweets"), 404, "unknown task 'tweets'")
    _error(_classify(client, "tweets@1"), 404, "unknown task 'tweets@1'")


def _serve(app) -> tuple[uvicorn.Server, threading.Thread, str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


@pytest.fixture
def live(engine):
    server, thread, url = _serve(create_app(engine, admin_token=TOKEN, max_wait_ms=20))
    yield url
    server.should_exit = True
    thread.join(timeout=30)


def test_answers_during_swaps_and_deletes_match_the_version_they_report(live, second_movie):
    """Uploads of a second version and deletes of it by name while requests flow: every
    answer equals what its reported version gives, and after each delete's 200 the next
    answer is version 1."""
    url = live
    body = {"inputs": [{"task": "movie", "text": "good movie"}]}
    want = {1: httpx.post(f"{url}/classify", json=body).json()["results"][0]["scores"]}
    stop = threading.Event()

    def swapper() -> list[int]:
        after_delete = []
        try:
            for _ in range(4):
                added = httpx.post(f"{url}/prompts?task=movie", content=second_movie, headers=AUTH)
                assert added.status_code == 200, added.text
                ref = added.json()["loaded"]["ref"]  # movie@2, then 3... (or 2 again)
                got = httpx.post(f"{url}/classify", json=body).json()["results"][0]
                want.setdefault("new", got["scores"])  # every upload is the same file
                removed = httpx.delete(f"{url}/prompts/{ref}", headers=AUTH)
                assert removed.status_code == 200, removed.text
                after = httpx.post(f"{url}/classify", json=body).json()["results"][0]
                after_delete.append(after["version"])
        finally:
            stop.set()
        return after_delete

    def asker() -> list[dict]:
        answers = []
        while not stop.is_set() and len(answers) < 200:
            response = httpx.post(f"{url}/classify", json=body, timeout=60)
            assert response.status_code == 200, response.text
            answers.append(response.json()["results"][0])
        return answers

    with ThreadPoolExecutor(4) as pool:
        askers = [pool.submit(asker) for _ in range(3)]
        assert pool.submit(swapper).result(timeout=120) == [1, 1, 1, 1]
        answers = [a for f in askers for a in f.result(timeout=120)]
    assert answers and want[1] != want["new"]
    for answer in answers:
        expected = want[1] if answer["version"] == 1 else want["new"]
        assert answer["scores"] == pytest.approx(expected, abs=1e-5)


# -- 2. max_completion_tokens: 0 is a value -------------------------------------------
def test_chat_max_completion_tokens_zero_is_refused_and_one_is_honoured(client):
    messages = [{"role": "user", "content": "good"}]
    zero = client.post(
        CHAT, json={"model": "story", "messages": messages, "max_completion_tokens": 0}
    )
    _error(zero, 400, "max_completion_tokens must be an integer from 1")
    one = client.post(
        CHAT,
        json={"model": "story", "messages": messages, "max_completion_tokens": 1, "max_tokens": 9},
    )
    assert one.status_code == 200 and one.json()["usage"]["completion_tokens"] <= 1


# -- 3. 500 -> 400 ------------------------------------------------------------------------
SURROGATE = '"bad \\ud800 text"'  # JSON for a lone high surrogate


@pytest.mark.parametrize(
    "path, body",
    [
        ("/classify", '{"inputs": [{"task": "movie", "text": %s}]}'),
        ("/generate", '{"inputs": [{"task": "story", "text": %s}]}'),
        ("/v1/completions", '{"model": "story", "prompt": %s}'),
        ("/v1/completions", '{"model": "movie", "prompt": ["fine", %s]}'),
        (CHAT, '{"model": "story", "messages": [{"role": "user", "content": %s}]}'),
        (
            CHAT,
            '{"model": "movie", "messages": [{"role": "user", '
            '"content": [{"type": "text", "text": %s}]}]}',
        ),
    ],
)
def test_a_lone_surrogate_in_a_text_field_is_a_400(client, path, body):
    _error(_raw(client, path, body % SURROGATE), 400, "lone surrogate", "UTF-8")


def test_a_lone_surrogate_anywhere_else_is_never_a_5xx(client):
    for body in [
        '{"inputs": [{"task": %s, "text": "x"}]}',
        '{"inputs": [{"task": "story", "text": "x", "stop": %s, "max_tokens": 2}]}',
        '{"inputs": [{"task": "movie", "image": %s}]}',
    ]:
        response = _raw(client, "/generate" if "stop" in body else "/classify", body % SURROGATE)
        assert response.status_code < 500, response.text
        json.loads(response.content.decode("utf-8"))  # the answer itself is valid UTF-8


def test_a_content_part_of_the_wrong_type_is_a_400(client):
    for text in (5, None, ["a"], {"b": 1}):
        parts = [{"type": "text", "text": text}]
        body = {"model": "movie", "messages": [{"role": "user", "content": parts}]}
        _error(client.post(CHAT, json=body), 400, "messages[0].content[0].text must be a string")


@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": 1e-45},
        {"temperature": 1e-300},
        {"temperature": 2, "top_p": 1e-300},
        {"temperature": 2, "top_p": 5e-324, "top_k": 1},
    ],
)
def test_extreme_but_valid_sampling_values_answer(client, sampling):
    body = {"model": "story", "prompt": "good", "max_tokens": 3, "seed": 1, **sampling}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text


def test_non_finite_sampling_values_are_a_400(client):
    for field in ("temperature", "top_p"):
        for value in ("NaN", "Infinity", "-Infinity"):
            body = f'{{"model": "story", "prompt": "good", "{field}": {value}}}'
            _error(_raw(client, "/v1/completions", body), 400, field)


def test_an_unexpected_error_is_a_500_counted_in_requests_total(client, engine, monkeypatch):
    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "run", broken)
    monkeypatch.setattr(engine, "serve", broken)  # the batcher's continuous path
    _error(_classify(client, "movie"), 500, "internal error (RuntimeError)")
    metrics = client.get("/metrics").text
    assert 'softprompt_requests_total{path="/classify",status="500"} 1' in metrics


# -- 4. every request is bounded ---------------------------------------------------------
def test_a_request_over_the_token_bound_is_refused_naming_the_flag(engine):
    app = create_app(engine, max_batch_tokens=120)
    with TestClient(app) as client:
        text = "the film was long and slow " * 3
        many = {"inputs": [{"task": "movie", "text": text}] * 12}
        message = _error(client.post("/classify", json=many), 413, "--max-batch-tokens", "120")
        assert "of its 12 inputs" in message
        assert client.post("/classify", json={"inputs": many["inputs"][:2]}).status_code == 200
        long = {"model": "story", "prompt": "good", "max_tokens": 500}  # generation counts
        _error(client.post("/v1/completions", json=long), 413, "--max-batch-tokens")
        _error(client.post("/v1/completions", json=dict(long, stream=True)), 413, "120")


def test_a_body_over_the_limit_is_refused(engine):
    with TestClient(create_app(engine, max_body_bytes=2000)) as client:
        body = {"inputs": [{"task": "movie", "text": "good " * 1000}]}
        _error(client.post("/classify", json=body), 413, "2,000-byte limit", "--max-upload-mb")
        small = {"inputs": [{"task": "movie", "text": "good"}]}
        assert client.post("/classify", json=small).status_code == 200


def _exchange(url: str, head: bytes, chunks, timeout: float = 20.0) -> tuple[bytes, int]:
    """Send `head` then `chunks` on a raw socket, stopping when the server answers; the
    answer and how many chunks were sent before it came."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head)
        sent = 0
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
        return _answer(sock), sent


def _answer(sock: socket.socket) -> bytes:
    """The server's whole response (headers and the body its Content-Length gives)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        more = sock.recv(65536)
        if not more:
            break
        data += more
    return data


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_70_mb_body_is_refused_before_it_is_read(engine):
    """A declared Content-Length over the limit: the 413 comes back with no body sent;
    a chunked body: the 413 comes soon after the 1 MB limit, not after 70 MB."""
    server, thread, live = _serve(create_app(engine, max_body_bytes=1 << 20))
    try:
        _refused_unread(live)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _refused_unread(live: str) -> None:
    head = (
        b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 73400320\r\n\r\n"
    )
    answer, _ = _exchange(live, head, [])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"73,400,320 bytes" in answer and b"--max-upload-mb" in answer
    chunked = (
        b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * (64 << 10)
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    answer, sent = _exchange(live, chunked, (chunk for _ in range(70 * 16)))  # 70 MB
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 200 and b"over the server's 1,048,576-byte limit" in answer


# -- 5. messages ------------------------------------------------------------------------
def test_a_huge_unknown_task_name_is_not_echoed_whole(client):
    name = "x" * 200_000
    message = _error(_classify(client, name), 404, "unknown task 'xxx", "200,000 characters")
    assert len(message) < 500
    chat = {"model": name, "messages": [{"role": "user", "content": "hi"}]}
    assert len(_error(client.post(CHAT, json=chat), 404, "unknown task")) < 500
    stop = {"inputs": [{"task": "story", "text": "x", "stop": ["y" * 100_000]}]}
    assert len(_error(client.post("/generate", json=stop), 400, "stop")) < 500


def test_an_image_sent_to_a_text_task_says_the_task_takes_text(client):
    for image in ("abc", "iVBORw0KGgo=", ""):
        body = {"inputs": [{"task": "movie", "image": image}]}
        _error(client.post("/classify", json=body), 400, "takes text, not an image")


def test_json_error_bodies_are_valid_utf8(client):
    body = '{"inputs": [{"task": %s, "text": "x"}]}'
    response = _raw(client, "/classify", body % SURROGATE)
    assert response.status_code == 404
    json.loads(response.content.decode("utf-8"))
