"""The router without a vLLM server: a `VllmEngine` whose "server" is the tiny llama run
here on the very `prompt_embeds` it would send, so dispatch, version binding, errors and
streaming are checked in seconds (tests/serve/test_vllm.py runs the real server)."""

from __future__ import annotations

import argparse
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from softprompt.errors import ConfigError
from softprompt.serve import commands
from softprompt.serve.app import _status, create_app
from softprompt.serve.engine import Engine, RefusedTask, UnknownTask
from softprompt.serve.router import Router
from softprompt.serve.sampling import Sampling
from softprompt.serve.store import StoreError, StoreFileChanged, StoreWriteError
from softprompt.serve.vllm import NotForVllm, VllmEngine, VllmError, VllmUnavailable, vllm_sampling

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class LocalVllm(VllmEngine):
    """VllmEngine answering from the backbone in this process, as vLLM would."""

    def __init__(self, backbone) -> None:
        self.folder, self.backbone, self.model_id = Path("/local"), backbone, "local"
        self.tasks, self.sent, self.down = {}, [], False
        self._embedding = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=4)

    def _completion(self, embeds: torch.Tensor, **body):
        if self.down:
            raise VllmUnavailable("vLLM at http://local is not answering (ConnectError)")
        self.sent.append(body)
        with torch.no_grad():
            logits = self.backbone.model(inputs_embeds=embeds[None]).logits[0, -1]  # (V,)
        logprobs = logits.float().log_softmax(-1)
        if "logprob_token_ids" in body:
            top = {f"token_id:{i}": float(logprobs[i]) for i in body["logprob_token_ids"]}
            return {"choices": [{"logprobs": {"top_logprobs": [top]}}]}
        token = int(logprobs.argmax())
        text = self.backbone.tokenizer.decode([token])
        return {"choices": [{"text": text, "token_ids": [token], "finish_reason": "length"}]}

    def _chunks(self, name, text, max_tokens, sampling):
        if self.down:
            raise VllmUnavailable("vLLM at http://local is not answering (ConnectError)")
        self.sent.append({"stream": True, **sampling})
        yield from [("ab", None), ("cd", None), ("", "length")]

    def close(self) -> None:
        self.pool.shutdown()


@pytest.fixture
def vllm(llama):
    engine = LocalVllm(llama)
    yield engine
    engine.close()


@pytest.fixture
def router(llama, store, vllm):
    router = Router(Engine(llama, store, cache_bytes=1 << 20, max_input_tokens=64), vllm)
    router.load_all()
    yield router
    router.close()


@pytest.fixture
def client(router):
    with TestClient(create_app(router, admin_token=TOKEN, max_upload_bytes=1 << 16)) as c:
        yield c


def test_tasks_go_to_the_engine_their_method_needs(router, client):
    """Input-level prompts on vLLM, the prefix-tuning task on the own engine; /tasks says so."""
    assert sorted(router.on_vllm) == ["movie", "plain", "story"]
    assert sorted(router.own.tasks) == ["tweets"]
    shown = {t["task"]: t["engine"] for t in client.get("/tasks").json()["tasks"]}
    assert shown == {"movie": "vllm", "plain": "vllm", "story": "vllm", "tweets": "own"}


def test_mixed_batch_answers_each_task_on_its_engine(router, engine, vllm):
    """One run with rows of both engines: each equals the own engine answering it alone
    (vLLM's rows computed from the prompt_embeds it was sent), and only vLLM's rows went
    to vLLM."""
    texts = ["a fine film", "boring", "great acting"]
    requests = [router.request(t, x, generate=False) for t in ("movie", "tweets") for x in texts]
    got = router.run(requests)
    want = engine.run([engine.request(r.served.task, r.text, generate=False) for r in requests])
    for g, w in zip(got, want, strict=True):
        assert (g["task"], g["version"], g["label"]) == (w["task"], w["version"], w["label"])
        assert all(abs(g["scores"][k] - w["scores"][k]) < 1e-4 for k in w["scores"])
    assert len(vllm.sent) == len(texts)  # the movie rows only


def test_vllm_down_is_503_and_never_answered_by_own_engine(client, router, vllm):
    vllm.down = True
    own_runs = []
    router.own.run = lambda rows: own_runs.append(rows) or []
    router.own.serve = lambda groups, *a: own_runs.append(groups)
    response = client.post("/classify", json={"inputs": [{"task": "movie", "text": "fine"}]})
    assert response.status_code == 503
    assert "not answering" in response.json()["error"]["message"]
    assert own_runs == []
    vllm.down = False  # back up: answered again
    response = client.post("/classify", json={"inputs": [{"task": "movie", "text": "fine"}]})
    assert response.status_code == 200 and response.json()["results"][0]["task"] == "movie"


def test_vllm_requests_do_not_wait_behind_an_own_engine_batch(client, router):
    """A vLLM-only request is sent at once, even while the model thread runs a batch."""
    release, running = threading.Event(), threading.Event()
    serve = router.own.serve  # the batcher's way into the own engine

    def slow(*args):
        running.set()
        release.wait(30)
        return serve(*args)

    router.own.serve = slow
    answers = {}

    def send(task: str) -> None:
        body = {"inputs": [{"task": task, "text": "a fine film"}]}
        answers[task] = client.post("/classify", json=body)

    own = threading.Thread(target=send, args=("tweets",))
    own.start()
    assert running.wait(10)
    fast = threading.Thread(target=send, args=("movie",))
    fast.start()
    fast.join(10)
    done = not fast.is_alive()
    release.set()
    own.join(10)
    assert done, "the vLLM request waited for the own engine's batch"
    assert answers["movie"].status_code == answers["tweets"].status_code == 200


def test_request_in_flight_keeps_its_version_across_a_hot_swap(router, vllm, prompt_files):
    bound = router.request("movie", "a fine film", generate=False)
    first = router.run([bound])[0]
    router.install("movie", prompt_files["plain"][0].read_bytes())  # movie@2: another prompt
    assert router.get("movie").entry.version == 2
    again = router.run([bound])[0]
    assert (again["version"], again["scores"]) == (1, first["scores"])
    assert router.run([router.request("movie", "a fine film", generate=False)])[0]["version"] == 2
    with pytest.raises(UnknownTask, match="serves version 2"):
        router.get("movie@1")


def test_new_version_of_another_method_moves_engine(router, prompt_files):
    """movie@2 is a prefix-tuning prompt: the own engine answers it; removing it puts
    movie@1 back on vLLM."""
    router.install("movie", prompt_files["tweets"][0].read_bytes())
    assert router.get("movie").engine == "own" and "movie" not in router.on_vllm
    assert router.run([router.request("movie", "ok", generate=False)])[0]["version"] == 2
    router.remove("movie@2")
    served = router.get("movie")
    assert (served.engine, served.entry.version) == ("vllm", 1)
    assert "movie" not in router.own.tasks
    router.remove("movie")
    with pytest.raises(UnknownTask):
        router.get("movie")


def test_generation_passes_sampling_and_streams_pieces(client, router, vllm):
    answer = client.post(
        "/generate",
        json={"inputs": [{"task": "story", "text": "a cat", "temperature": 0.5, "seed": 3}]},
    )
    assert answer.status_code == 200, answer.text
    sent = vllm.sent[-1]
    assert (sent["temperature"], sent["seed"], sent["max_tokens"]) == (0.5, 3, 4)
    body = {"model": "story", "prompt": "a cat", "stream": True, "stop": ["zz"]}
    with client.stream("POST", "/v1/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    assert '"text": "ab"' in lines[0] and '"text": "cd"' in lines[1]
    assert '"finish_reason": "length"' in lines[-1]
    assert vllm.sent[-1]["stop"] == ["zz"]


def test_sampling_maps_to_vllm_fields():
    sampling = Sampling(temperature=0.7, top_p=0.9, top_k=5, seed=11, stop=["\n"])
    assert vllm_sampling(sampling) == {
        "temperature": 0.7, "top_p": 0.9, "top_k": 5, "seed": 11, "stop": ["\n"],
    }  # fmt: skip
    assert vllm_sampling(Sampling()) == {"temperature": 0.0, "top_p": 1.0, "top_k": 0}


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (VllmUnavailable, 503),
        (NotForVllm, 409),
        (VllmError, 400),
        (RefusedTask, 409),
        (StoreWriteError, 507),
        (StoreFileChanged, 409),
    ],
)
def test_status_codes(error, status):
    assert _status(error("why")) == status


@pytest.mark.parametrize(
    ("error", "status"),
    [(StoreWriteError, 507), (StoreFileChanged, 409), (StoreError, 404)],
)
def test_delete_reports_store_errors_as_what_they_are(engine, error, status):
    def remove(ref):
        raise error("the store says why")

    engine.remove = remove
    with TestClient(create_app(engine, admin_token=TOKEN)) as client:
        response = client.delete("/prompts/movie", headers=AUTH)
    assert response.status_code == status
    assert response.json()["error"]["message"] == "the store says why"


def test_upload_is_checked_in_the_store_scratch_folder(engine, prompt_files, monkeypatch):
    """Not in /tmp: a killed server's leftovers are the store's to sweep."""
    built = []
    build = engine._build
    monkeypatch.setattr(
        engine, "_build", lambda path, what: built.append(path) or build(path, what)
    )
    engine.install("movie", prompt_files["movie"][0].read_bytes())
    assert len(built) == 1 and built[0].parent.parent == engine.store.root
    assert not built[0].parent.exists()  # removed once checked


def _serve_args(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *flags])


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--engine", "vllm"], "--vllm-url URL"),
        (["--vllm-url", "http://x"], "only with --engine vllm"),
        (["--engine", "vllm", "--vllm-url", "http://x", "--vllm-start"], "--vllm-url URL"),
        (["--engine", "vllm", "--vllm-start", "--backbone-adapter", "a"], "plain backbone"),
    ],
)
def test_engine_flags_are_checked(flags, says):
    with pytest.raises(ConfigError, match=says):
        commands._check_engine_flags(_serve_args(*flags))


def test_serve_passes_body_and_request_limits(monkeypatch, llama, store):
    import uvicorn

    import softprompt.backbones
    import softprompt.serve.app

    seen = {}
    monkeypatch.setattr(softprompt.backbones, "load_backbone", lambda *a, **k: llama)
    monkeypatch.setattr(softprompt.serve.app, "create_app", lambda e, **kw: seen.update(kw))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    args = _serve_args(
        "--store", str(store.root), "--max-body-mb", "2", "--max-request-tokens", "99"
    )
    assert commands.run_serve(args) == 0
    assert (seen["max_body_bytes"], seen["max_request_tokens"]) == (2 << 20, 99)
