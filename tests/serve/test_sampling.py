"""Sampling parameters and stop sequences: the warpers by hand, the engine's decoding
against plain greedy generation, seeded reproducibility, stop sequences over HTTP
(plain and streamed), and every bad value a 4xx naming its field."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient

from softprompt.serve.app import create_app
from softprompt.serve.sampling import (
    BadSampling,
    Sampling,
    check_sampling,
    find_stop,
    held_back,
    warp,
)


@pytest.fixture
def client(engine):
    with TestClient(create_app(engine)) as c:
        yield c


def _generate(engine, text="good", **sampling):
    limit = sampling.pop("max_tokens", 12)
    params = check_sampling(**sampling)
    request = engine.request("story", text, generate=True, max_tokens=limit, sampling=params)
    return engine.run([request])[0]


# -- the pieces ---------------------------------------------------------------------
def test_warp_by_hand():
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    probs = warp(logits, Sampling(temperature=1.0, top_p=0.7))
    torch.testing.assert_close(probs, torch.tensor([0.625, 0.375, 0.0]))  # 0.5 + 0.3 reach 0.7
    probs = warp(logits, Sampling(temperature=1.0, top_k=1))
    torch.testing.assert_close(probs, torch.tensor([1.0, 0.0, 0.0]))
    probs = warp(logits, Sampling(temperature=1.0, top_p=1e-9))  # the likeliest always stays
    torch.testing.assert_close(probs, torch.tensor([1.0, 0.0, 0.0]))
    hot = warp(logits, Sampling(temperature=2.0))
    root = torch.tensor([0.5, 0.3, 0.2]).sqrt()  # temperature 2: p^(1/2), renormalized
    torch.testing.assert_close(hot, root / root.sum())


def test_stop_helpers():
    assert find_stop("hello world", ["wor", "lo"]) == 3
    assert find_stop("hello", ["x"]) == -1
    assert held_back("the end", ["ending"]) == 3  # "end" may grow into "ending"
    assert held_back("the en", ["ending", "n"]) == 2
    assert held_back("abc", ["xyz"]) == 0


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("temperature", -0.1, "temperature must be from 0"),
        ("temperature", 2.5, "temperature must be from 0"),
        ("temperature", "hot", "temperature must be a number"),
        ("top_p", 0.0, "top_p must be above 0"),
        ("top_p", 1.5, "top_p must be above 0"),
        ("top_k", -1, "top_k must be 0"),
        ("top_k", 2.5, "top_k must be an integer"),
        ("seed", -3, "seed must be from 0"),
        ("seed", 2**64, "seed must be from 0"),
        ("stop", ["a"] * 5, "at most 4"),
        ("stop", [""], "1 to 256 characters"),
        ("stop", 7, "string or a list of strings"),
    ],
)
def test_bad_values_are_refused_with_the_field(field, value, fragment):
    with pytest.raises(BadSampling, match=fragment):
        check_sampling(**{field: value})


def test_top_k_over_the_vocabulary_is_refused():
    with pytest.raises(BadSampling, match="vocabulary has 10"):
        check_sampling(top_k=11, vocab=10)


# -- the engine -----------------------------------------------------------------------
def test_temperature_zero_equals_plain_greedy_generation(engine, prompt_files, llama):
    model = prompt_files["story"][1]
    want = model.task.generate(model.injector, model.prompt(), ["good"])[0]  # max_new_tokens 4
    assert _generate(engine, max_tokens=4)["text"] == want
    assert _generate(engine, max_tokens=4, temperature=0.0, seed=5)["text"] == want
    # a draw from only the likeliest token is greedy too
    assert _generate(engine, max_tokens=4, temperature=1.0, top_k=1, seed=3)["text"] == want
    assert _generate(engine, max_tokens=4, temperature=1.0, top_p=1e-9, seed=3)["text"] == want


def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(engine):
    params = check_sampling(temperature=1.5, seed=7)
    first = _generate(engine, temperature=1.5, seed=7)
    assert _generate(engine, temperature=1.5, seed=7) == first
    mixed = [
        engine.request("story", "bad", generate=True, max_tokens=5),
        engine.request("story", "good", generate=True, max_tokens=12, sampling=params),
        engine.request("movie", "good", generate=False),
    ]
    assert engine.run(mixed)[1]["text"] == first["text"]
    texts = {_generate(engine, temperature=1.5, seed=s)["text"] for s in range(6)}
    assert len(texts) > 1  # the seed matters: a random tiny model has a flat distribution


def test_stop_sequence_cuts_the_text_and_says_stop(engine):
    full = _generate(engine, temperature=1.5, seed=11, max_tokens=16)
    assert len(full["text"]) >= 6, full
    stop = full["text"][3:5]
    expected = full["text"][: full["text"].find(stop)]
    got = _generate(engine, temperature=1.5, seed=11, max_tokens=16, stop=["zzzq", stop])
    assert got["text"] == expected and got["finish_reason"] == "stop"
    assert got["tokens"] < full["tokens"] or full["finish_reason"] == "stop"


# -- over HTTP --------------------------------------------------------------------------
def test_generate_endpoint_takes_sampling_and_stop(client, engine):
    full = _generate(engine, temperature=1.5, seed=11, max_tokens=16)["text"]
    stop = full[3:5]
    item = {"task": "story", "text": "good", "max_tokens": 16, "temperature": 1.5, "seed": 11}
    response = client.post("/generate", json={"inputs": [dict(item, stop=stop), item]})
    assert response.status_code == 200, response.text
    cut, whole = response.json()["results"]
    assert cut["text"] == full[: full.find(stop)] and cut["finish_reason"] == "stop"
    assert whole["text"] == full


def test_openai_completions_and_chat_stream_stop_equal_the_plain_answer(client, engine):
    full = _generate(engine, temperature=1.5, seed=11, max_tokens=16)["text"]
    stop = full[3:5]
    want = full[: full.find(stop)]
    body = {"model": "story", "max_tokens": 16, "temperature": 1.5, "seed": 11, "stop": [stop]}
    plain = client.post("/v1/completions", json=dict(body, prompt="good")).json()
    assert plain["choices"][0]["text"] == want
    assert plain["choices"][0]["finish_reason"] == "stop"
    streamed = client.post("/v1/completions", json=dict(body, prompt="good", stream=True))
    chunks = [json.loads(x[6:]) for x in streamed.text.splitlines() if x.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks) == want
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    messages = [{"role": "user", "content": "good"}]
    chat = client.post("/v1/chat/completions", json=dict(body, messages=messages, stream=True)).text
    deltas = [json.loads(x[6:]) for x in chat.splitlines() if x.startswith("data: {")]
    assert "".join(d["choices"][0]["delta"].get("content", "") for d in deltas) == want
    assert deltas[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "path, extra, status, fragment",
    [
        ("/v1/completions", {"temperature": 9}, 400, "temperature must be from 0"),
        ("/v1/completions", {"top_p": 0}, 400, "top_p must be above 0"),
        ("/v1/completions", {"top_k": 10**9}, 400, "top_k must be 0"),
        ("/v1/completions", {"seed": -1}, 400, "seed must be from 0"),
        ("/v1/completions", {"stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4"),
        ("/v1/completions", {"max_tokens": 0}, 400, "max_tokens must be an integer"),
        ("/v1/completions", {"temperature": "hot"}, 422, "temperature"),
        ("/v1/completions", {"stream": True, "top_p": 2}, 400, "top_p"),
        ("/v1/chat/completions", {"stop": ""}, 400, "1 to 256 characters"),
        ("/generate", {"top_k": -2}, 400, "top_k must be 0"),
        ("/generate", {"stop": {"x": 1}}, 422, "stop"),
    ],
)
def test_bad_sampling_over_http_is_a_4xx_with_a_message(client, path, extra, status, fragment):
    if path == "/generate":
        body = {"inputs": [{"task": "story", "text": "good", **extra}]}
    elif path == "/v1/completions":
        body = {"model": "story", "prompt": "good", **extra}
    else:
        body = {"model": "story", "messages": [{"role": "user", "content": "good"}], **extra}
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "params",
    [
        Sampling(temperature=1e-45),  # logits / 1e-45 overflowed to inf: softmax NaN
        Sampling(temperature=1e-300),  # 0 in float32
        Sampling(temperature=2.0, top_p=1e-300),  # top_p rounded to 0 dropped every token
        Sampling(temperature=1.0, top_p=5e-324, top_k=2),
    ],
)
def test_warp_gives_a_distribution_for_every_valid_value(params):
    logits = torch.tensor([3.0, 1.0, 1.0, -2.0])
    probs = warp(logits, params)
    assert torch.isfinite(probs).all() and float(probs.sum()) == pytest.approx(1.0)
    assert int(probs.argmax()) == 0
    assert int(torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(0))) == 0


def test_warp_of_non_finite_logits_falls_back_to_the_likeliest():
    nan = float("nan")
    probs = warp(torch.tensor([nan, float("-inf"), 1.0, 0.0]), Sampling(temperature=1.0, top_k=1))
    torch.testing.assert_close(probs, torch.tensor([0.0, 0.0, 1.0, 0.0]))
    probs = warp(torch.tensor([float("-inf"), nan]), Sampling(temperature=1.0))
    assert torch.isfinite(probs).all() and float(probs.sum()) == 1.0
    probs = warp(torch.tensor([float("inf"), 0.0]), Sampling(temperature=0.5))
    torch.testing.assert_close(probs, torch.tensor([1.0, 0.0]))
