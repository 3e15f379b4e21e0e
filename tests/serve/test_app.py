"""The HTTP server: each endpoint's happy path and bad requests (in-process TestClient),
an OpenAI client round trip against a real uvicorn on loopback, and dynamic batches."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from softprompt.client import Client, ServerError
from softprompt.serve.app import create_app
from softprompt.serve.sampling import check_sampling

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(engine):
    with TestClient(create_app(engine, admin_token=TOKEN, max_upload_bytes=1 << 16)) as c:
        yield c


def _alone(engine, task, text, **kw):
    return engine.run([engine.request(task, text, generate=None, **kw)])[0]


def _error(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"]


def test_classify_mixed_tasks(client, engine):
    inputs = [
        {"task": "movie", "text": "good movie"},
        {"task": "tweets", "text": "i hated it"},
        {"task": "movie", "text": "bad"},
    ]
    response = client.post("/classify", json={"inputs": inputs})
    assert response.status_code == 200
    for item, got in zip(inputs, response.json()["results"], strict=True):
        want = _alone(engine, item["task"], item["text"])
        assert got["label"] == want["label"] and got["task"] == item["task"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)


def test_generate(client, engine):
    response = client.post(
        "/generate", json={"inputs": [{"task": "story", "text": "good", "max_tokens": 3}]}
    )
    assert response.status_code == 200
    got = response.json()["results"][0]
    assert got["text"] == _alone(engine, "story", "good", max_tokens=3)["text"]
    assert got["finish_reason"] in ("stop", "length") and got["version"] == 1


def test_openai_shapes(client, engine):
    body = client.post(
        "/v1/completions", json={"model": "story", "prompt": ["good", "bad"], "max_tokens": 2}
    ).json()
    assert body["object"] == "text_completion" and [c["index"] for c in body["choices"]] == [0, 1]
    assert body["choices"][1]["text"] == _alone(engine, "story", "bad", max_tokens=2)["text"]
    chat = client.post(
        "/v1/chat/completions",
        json={
            "model": "movie",
            "messages": [
                {"role": "system", "content": "x"},
                {"role": "user", "content": "good movie"},
            ],
        },
    ).json()
    assert (
        chat["choices"][0]["message"]["content"] == _alone(engine, "movie", "good movie")["label"]
    )
    models = client.get("/v1/models").json()
    assert sorted(m["id"] for m in models["data"]) == ["movie", "plain", "story", "tweets"]


def test_streaming_sends_the_same_text_piece_by_piece(client, engine):
    response = client.post(
        "/v1/completions",
        json={"model": "story", "prompt": "good", "max_tokens": 4, "stream": True},
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith(
        "text/event-stream"
    )
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == _alone(engine, "story", "good", max_tokens=4)["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    chat = client.post(
        "/v1/chat/completions",
        json={
            "model": "story",
            "messages": [{"role": "user", "content": "good"}],
            "max_tokens": 4,
            "stream": True,
        },
    )
    deltas = [json.loads(line[6:]) for line in chat.text.splitlines() if line.startswith("data: {")]
    assert deltas[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(d["choices"][0]["delta"].get("content", "") for d in deltas) == text


def test_inspection_endpoints(client):
    tasks = client.get("/tasks").json()
    assert {t["task"]: t["kind"] for t in tasks["tasks"]}["story"] == "generation"
    assert client.get("/health").json()["status"] == "ok"
    client.post("/classify", json={"inputs": [{"task": "movie", "text": "good"}]})
    client.post("/classify", json={"inputs": [{"task": "movie", "text": "good"}]})
    text = client.get("/metrics").text
    assert 'softprompt_requests_total{path="/classify",status="200"} 2' in text
    assert "softprompt_cache_hits 1" in text and "softprompt_batch_rows_count 2" in text
    assert "softprompt_queue_wait_seconds_bucket" in text


@pytest.mark.parametrize(
    "path,body,status,fragment",
    [
        ("/classify", b"{not json", 422, "JSON"),
        ("/classify", {"inputs": []}, 422, "inputs"),
        ("/classify", {"inputs": [{"task": "movie"}]}, 400, "the text must be a non-empty string"),
        ("/classify", {"inputs": [{"task": "movie", "text": "x", "extra": 1}]}, 422, "extra"),
        ("/classify", {"inputs": [{"task": "nope", "text": "good"}]}, 404, "unknown task 'nope'"),
        ("/classify", {"inputs": [{"task": "story", "text": "good"}]}, 400, "/generate"),
        ("/classify", {"inputs": [{"task": "movie", "text": "good " * 200}]}, 413, "too long"),
        ("/classify", {"inputs": [{"task": "movie", "text": " "}]}, 400, "non-empty"),
        ("/generate", {"inputs": [{"task": "movie", "text": "good"}]}, 400, "/classify"),
        (
            "/generate",
            {"inputs": [{"task": "story", "text": "good", "max_tokens": -1}]},
            400,
            "max_tokens",
        ),
        ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "unknown task"),
        ("/v1/completions", {"model": "story", "prompt": "x", "n": 0}, 400, "n must be"),
        ("/v1/completions", {"model": "story", "prompt": []}, 400, "prompt"),
        (
            "/v1/completions",
            {"model": "story", "prompt": "x", "stream": True, "max_tokens": 0},
            400,
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            {"model": "movie", "messages": [{"role": "system", "content": "x"}]},
            400,
            "user",
        ),
        ("/v1/chat/completions", {"model": "movie"}, 422, "messages"),
        ("/nowhere", {}, 404, "Not Found"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(client, path, body, status, fragment):
    if isinstance(body, bytes):
        response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        response = client.post(path, json=body)
    _error(response, status, fragment)
    assert client.get("/health").status_code == 200  # and the server is still there


def test_one_bad_input_fails_its_request_only(client, engine):
    bad = client.post(
        "/classify",
        json={"inputs": [{"task": "movie", "text": "good"}, {"task": "nope", "text": "x"}]},
    )
    assert bad.status_code == 404
    good = client.post("/classify", json={"inputs": [{"task": "movie", "text": "good"}]})
    assert good.json()["results"][0]["label"] == _alone(engine, "movie", "good")["label"]


def test_admin_upload_and_delete(client, prompt_files, trained, llama, gpt2, tmp_path):
    data = trained(llama, "soft-prompt", 77).save(tmp_path / "v2.safetensors").read_bytes()
    _error(client.post("/prompts?task=movie", content=data), 401, "bearer")
    _error(
        client.post("/prompts?task=movie", content=data, headers={"Authorization": "Bearer wrong"}),
        401,
        "bearer",
    )
    _error(client.post("/prompts?task=movie", content=b"x" * 70000, headers=AUTH), 413, "limit")
    _error(client.post("/prompts?task=movie", content=b"", headers=AUTH), 400, "empty")
    _error(
        client.post("/prompts?task=movie", content=b"garbage!", headers=AUTH), 400, "not a readable"
    )
    _error(client.post("/prompts?task=bad@name", content=data, headers=AUTH), 400, "task name")
    alien = trained(gpt2, "soft-prompt", 1).save(tmp_path / "alien.safetensors").read_bytes()
    _error(client.post("/prompts?task=movie", content=alien, headers=AUTH), 409, "tiny-gpt2")
    loaded = client.post("/prompts?task=movie", content=data, headers=AUTH)
    assert loaded.status_code == 200 and loaded.json()["loaded"]["version"] == 2
    got = client.post("/classify", json={"inputs": [{"task": "movie", "text": "good"}]}).json()
    assert got["results"][0]["version"] == 2
    new = client.post("/prompts?task=fresh", content=data, headers=AUTH).json()["loaded"]
    assert new["ref"] == "fresh@1"
    _error(client.delete("/prompts/tweets"), 401, "bearer")
    assert client.delete("/prompts/tweets", headers=AUTH).json() == {"removed": ["tweets@1"]}
    _error(
        client.post("/classify", json={"inputs": [{"task": "tweets", "text": "good"}]}),
        404,
        "unknown task",
    )
    _error(client.delete("/prompts/tweets", headers=AUTH), 404, "no 'tweets'")


def test_admin_is_off_without_a_token(engine):
    with TestClient(create_app(engine)) as c:
        _error(c.post("/prompts?task=movie", content=b"x", headers=AUTH), 403, "--admin-token")
        _error(c.delete("/prompts/movie", headers=AUTH), 403, "--admin-token")


# -- a real server on loopback ---------------------------------------------------------
@pytest.fixture
def live(engine):
    """uvicorn on 127.0.0.1 (a free port) in a thread; a 100 ms batching window."""
    app = create_app(engine, admin_token=TOKEN, max_wait_ms=100)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=30)


def test_openai_client_round_trip_on_loopback(live, engine):
    openai = pytest.importorskip("openai")  # in the dev extra: installed in CI
    url, _ = live
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    assert sorted(m.id for m in client.models.list()) == ["movie", "plain", "story", "tweets"]
    completion = client.completions.create(model="story", prompt="good", max_tokens=3)
    assert completion.choices[0].text == _alone(engine, "story", "good", max_tokens=3)["text"]
    chat = client.chat.completions.create(
        model="movie", messages=[{"role": "user", "content": "good movie"}]
    )
    assert chat.choices[0].message.content == _alone(engine, "movie", "good movie")["label"]
    pieces = client.chat.completions.create(
        model="story", messages=[{"role": "user", "content": "good"}], max_tokens=3, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in pieces)
    assert streamed == _alone(engine, "story", "good", max_tokens=3)["text"]
    with pytest.raises(openai.NotFoundError, match="unknown task"):
        client.completions.create(model="nope", prompt="x")


def test_openai_client_sampling_and_stop_on_loopback(live, engine):
    """The `openai` package's own fields (temperature, top_p, seed, stop; top_k through
    extra_body as vLLM takes it) reach the sampler: the answer equals the engine's."""
    openai = pytest.importorskip("openai")
    url, _ = live
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    params = {"temperature": 1.5, "top_p": 0.95, "seed": 11, "max_tokens": 16}
    full = client.completions.create(model="story", prompt="good", **params).choices[0]
    sampling = check_sampling(temperature=1.5, top_p=0.95, seed=11)
    want = _alone(engine, "story", "good", max_tokens=16, sampling=sampling)
    assert full.text == want["text"]
    stop = full.text[2:4]
    cut = client.completions.create(model="story", prompt="good", stop=[stop], **params)
    assert cut.choices[0].text == full.text[: full.text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    greedy = client.completions.create(
        model="story", prompt="good", max_tokens=4, temperature=1.0, extra_body={"top_k": 1}
    )
    assert greedy.choices[0].text == _alone(engine, "story", "good", max_tokens=4)["text"]
    with pytest.raises(openai.BadRequestError, match="temperature must be from 0"):
        client.completions.create(model="story", prompt="good", temperature=5)


def test_python_client_on_loopback(live, engine, prompt_files):
    url, _ = live
    client = Client(url, token=TOKEN)
    assert client.health()["tasks"] == 4
    got = client.classify([("movie", "good"), ("tweets", "bad")])
    assert [g["label"] for g in got] == [
        _alone(engine, t, x)["label"] for t, x in [("movie", "good"), ("tweets", "bad")]
    ]
    text = client.generate([("story", "good")], max_tokens=3)[0]["text"]
    assert "".join(client.stream("story", "good", max_tokens=3)) == text
    drawn = client.generate([("story", "good")], max_tokens=6, temperature=1.5, seed=4)[0]
    streamed = client.stream("story", "good", max_tokens=6, temperature=1.5, seed=4)
    assert "".join(streamed) == drawn["text"]
    assert client.upload("copy", str(prompt_files["movie"][0]))["ref"] == "copy@1"
    assert client.remove("copy") == ["copy@1"]
    with pytest.raises(ServerError, match="HTTP 404"):
        client.classify([("copy", "good")])


def test_concurrent_requests_share_batches_and_get_their_own_answers(live, engine):
    url, app = live
    jobs = [
        ("movie", "good movie"),
        ("tweets", "bad plot"),
        ("plain", "fun"),
        ("movie", "i hated it"),
        ("tweets", "great"),
        ("story", "good"),
    ]

    def send(job):
        task, text = job
        path = "/generate" if task == "story" else "/classify"
        body = {"inputs": [{"task": task, "text": text}]}
        return httpx.post(url + path, json=body, timeout=60).json()["results"][0]

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(send, jobs))
    for (task, text), got in zip(jobs, answers, strict=True):
        want = _alone(engine, task, text)
        assert got["task"] == task
        assert got.get("label") == want.get("label") and got.get("text") == want.get("text")
    rows = app.state.metrics.histograms["softprompt_batch_rows"]
    assert rows.n < len(jobs)  # fewer batches than requests: some shared a forward pass


def test_upload_that_cannot_be_rebuilt_is_refused_and_not_stored(client, engine, llama, tmp_path):
    """A well-formed file for this backbone whose metadata lacks the task: a 400, the store
    and the served version unchanged."""
    from softprompt.promptfile import save_prompt_file

    meta = {"backbone": {"name": llama.name, "fingerprint": llama.fingerprint}, "method": {}}
    path = save_prompt_file(tmp_path / "odd.safetensors", {}, meta)
    response = client.post("/prompts?task=movie", content=path.read_bytes(), headers=AUTH)
    _error(response, 400, "malformed")  # the header check names it
    assert [e.ref for e in engine.store.entries() if e.task == "movie"] == ["movie@1"]
    assert engine.tasks["movie"].entry.version == 1
