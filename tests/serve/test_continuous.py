"""Continuous batching (serve/continuous.py): requests that arrive while the engine
decodes join the decode at its next step, every answer equal to its request run alone
(soft prompts, prefix tuning and no prompt mixed, sampled and streamed rows, a
classification input arriving mid-decode), and a hot swap still answers each request
with the version it reports."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from softprompt.serve.app import create_app
from softprompt.serve.continuous import Answered
from softprompt.serve.engine import Engine
from softprompt.serve.sampling import Sampling
from softprompt.serve.store import PromptStore

GENERATORS = {  # task -> (method, seed): prompt prefixes of different kinds and widths
    "soft": ("soft-prompt", 11),
    "prefix": ("prefix-tuning", 12),
    "plain": ("none", 0),
}
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def files(llama, trained, prompt_files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("continuous")
    out = {
        task: trained(llama, method, seed, kind="generation", max_new_tokens=6).save(
            folder / f"{task}.safetensors"
        )
        for task, (method, seed) in GENERATORS.items()
    }
    out["soft2"] = trained(llama, "soft-prompt", 21, kind="generation").save(
        folder / "soft2.safetensors"
    )
    out["movie"] = prompt_files["movie"][0]  # a classification task
    return out


def _engine(llama, tmp_path, files, **options) -> Engine:
    store = PromptStore(tmp_path / "store")
    for task in (*GENERATORS, "movie"):
        store.add(task, files[task])
    engine = Engine(llama, store, **options)
    engine.load_all()
    return engine


def _steps(engine: Engine, at: int | None = None, until=None) -> list[int]:
    """Rows in each decoding step (one token per row); step `at` waits (30 s at most)
    until `until()` holds, so a request can arrive while the decode runs."""
    sizes, step = [], engine._injector.step

    def stepping(ids, *args, **kwargs):
        if ids.shape[1] == 1:
            sizes.append(ids.shape[0])
            deadline = time.monotonic() + 30
            while len(sizes) == at and not until() and time.monotonic() < deadline:
                time.sleep(0.01)
        return step(ids, *args, **kwargs)

    engine._injector.step = stepping
    return sizes


class _Arrivals:
    """Hands in groups after given decoding steps; notes what was running then."""

    def __init__(self, schedule: dict[int, list[Answered]], first: Answered) -> None:
        self.schedule, self.first, self.calls = schedule, first, 0
        self.seen: list[tuple[int, bool]] = []  # (rows going, first group still open)

    def take(self, rows: int) -> list[Answered]:
        self.calls += 1
        self.seen.append((rows, self.first.answers is None))
        return self.schedule.pop(self.calls, [])


def _same(got: dict, want: dict) -> None:
    if "scores" in want:
        assert got["label"] == want["label"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
    else:
        keys = ("text", "tokens", "finish_reason", "logprobs")
        assert {k: got[k] for k in keys} == {k: want[k] for k in keys}
    assert (got["task"], got["version"]) == (want["task"], want["version"])


@pytest.mark.parametrize("pack", [None, 128])
def test_groups_arriving_mid_decode_join_it_and_answer_as_alone(llama, tmp_path, files, pack):
    engine = _engine(llama, tmp_path, files, pack_tokens=pack)

    def ask(task, text, **kw):
        return engine.request(task, text, generate=None, **kw)

    def groups():
        first = Answered([ask("soft", "the film was", max_tokens=10)])
        second = Answered(
            [
                ask(
                    "prefix",
                    "bad plot and",
                    max_tokens=3,
                    sampling=Sampling(temperature=0.9, seed=4),
                ),
                ask("movie", "a fine film"),  # classification: answered as it arrives
            ]
        )
        third = Answered(
            [
                ask("plain", "i loved it so much more than", max_tokens=4),
                ask("soft", "good", max_tokens=2, sampling=Sampling(logprobs=2)),
            ]
        )
        return first, second, third

    first, second, third = groups()
    arrivals = _Arrivals({2: [second], 3: [third]}, first)
    sizes = _steps(engine)
    engine.serve([first], arrivals)
    steps = len(sizes)
    alone = [[engine.run([r])[0] for r in g.inputs] for g in groups()]
    for group, want in zip((first, second, third), alone, strict=True):
        for got, expected in zip(group.answers, want, strict=True):
            _same(got, expected)
    assert arrivals.seen[1] == (1, True) and arrivals.seen[2][1]  # joined mid-decode
    assert max(sizes[:steps]) == 4  # rows of the three groups in one step


def test_continuous_off_never_takes_arrivals(llama, tmp_path, files):
    engine = _engine(llama, tmp_path, files, continuous=False)
    first = Answered([engine.request("soft", "the film was", generate=True, max_tokens=3)])
    arrivals = _Arrivals({}, first)
    engine.serve([first], arrivals)
    assert arrivals.calls == 0 and first.answers[0]["tokens"]


def _stream(client, body) -> str:
    with client.stream("POST", "/v1/completions", json=dict(body, stream=True)) as response:
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(line) for line in lines if line != "[DONE]"]
    return "".join(c["choices"][0]["text"] for c in chunks)


def test_a_request_sent_mid_decode_joins_it_over_http(llama, tmp_path, files):
    """Over HTTP: /generate starts a decode; a streamed OpenAI completion sent while it
    runs joins it (a step runs both rows) and streams the text it gives alone. Fails on
    an engine that only batches requests arriving together (the second waits)."""
    engine = _engine(llama, tmp_path, files)
    long = {"inputs": [{"task": "prefix", "text": "the film was", "max_tokens": 12}]}
    short = {"model": "soft", "prompt": "good", "max_tokens": 4}
    with TestClient(create_app(engine)) as client:
        batcher = client.app.state.batcher
        sizes = _steps(engine, at=2, until=lambda: batcher.waiting > 0)
        answers = {}
        first = threading.Thread(
            target=lambda: answers.update(a=client.post("/generate", json=long))
        )
        first.start()
        while not sizes:
            time.sleep(0.01)
        streamed = _stream(client, short)
        first.join(30)
        alone = client.post("/v1/completions", json=short).json()["choices"][0]["text"]
        text = engine.run([engine.request("prefix", "the film was", generate=True, max_tokens=12)])
    assert 2 in sizes[:12], f"the second request never joined the decode: steps {sizes}"
    assert streamed == alone
    assert answers["a"].json()["results"][0]["text"] == text[0]["text"]


def test_a_swap_waiting_stops_joins_and_each_answer_keeps_its_version(llama, tmp_path, files):
    """A prompt upload waits for the model thread: while it waits nothing joins the
    running decode (so the swap is not starved), and a request bound to version 1
    before the swap still answers as version 1 after it; the next gets version 2."""
    engine = _engine(llama, tmp_path, files)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"inputs": [{"task": "soft", "text": "good", "max_tokens": 3}]}
    v1 = engine.run([engine.request("soft", "good", generate=True, max_tokens=3)])[0]
    with TestClient(create_app(engine, admin_token=TOKEN)) as client:
        batcher = client.app.state.batcher
        sizes = _steps(engine, at=2, until=lambda: batcher._calls and batcher.waiting)
        answers = {}

        def send(key, path, **kw):
            answers[key] = client.post(path, **kw)

        threads = [
            threading.Thread(
                target=send,
                args=("long", "/generate"),
                kwargs={"json": {"inputs": [{"task": "plain", "text": "x y", "max_tokens": 8}]}},
            ),
            threading.Thread(
                target=send,
                args=("swap", "/prompts?task=soft"),
                kwargs={"content": files["soft2"].read_bytes(), "headers": auth},
            ),
            threading.Thread(target=send, args=("bound", "/generate"), kwargs={"json": body}),
        ]
        threads[0].start()
        while not sizes:
            time.sleep(0.01)
        threads[1].start()
        while not batcher._calls:
            time.sleep(0.01)
        threads[2].start()
        for thread in threads:
            thread.join(30)
        after = client.post("/generate", json=body).json()["results"][0]
    assert answers["swap"].status_code == 200
    bound = answers["bound"].json()["results"][0]
    assert bound["version"] == 1 and bound["text"] == v1["text"]
    assert after["version"] == 2
    assert max(sizes[:8]) == 1  # the bound request did not join while the swap waited
