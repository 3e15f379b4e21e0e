"""The OpenAI surface driven by the official `openai` client against a real uvicorn on
loopback: usage in streams, log-probs, n > 1, refused fields, models.retrieve with a
versioned name; and the docs page and metrics a newcomer opens."""

from __future__ import annotations

import math
import threading
import time

import httpx
import pytest
import torch
import uvicorn

from softprompt import cli
from softprompt.data import Example
from softprompt.serve.app import create_app
from softprompt.serve.sampling import check_sampling

openai = pytest.importorskip("openai")  # in the dev extra: installed in CI


@pytest.fixture
def live(engine):
    """uvicorn on 127.0.0.1 (a free port) in a thread; a 20 ms batching window."""
    app = create_app(engine, max_wait_ms=20)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def client(live):
    return openai.OpenAI(base_url=f"{live}/v1", api_key="unused", max_retries=0)


def _alone(engine, task, text, **kw):
    return engine.run([engine.request(task, text, generate=None, **kw)])[0]


def _ran(engine, model, text: str) -> int:
    """Tokens that ran for one input, from the unserved model: its filled template (with
    the text), its virtual tokens and BOS."""
    context = model.task.contexts([Example(text, "")])[0]
    with torch.no_grad():
        virtual = model.prompt().length
    return len(context) + virtual + int(engine.backbone.spec.bos_token_id is not None)


def test_stream_carries_usage_counting_template_and_virtual_tokens(client, engine, prompt_files):
    words = len(engine.backbone.tokenizer("good", add_special_tokens=False)["input_ids"])
    ran = _ran(engine, prompt_files["story"][1], "good")
    assert ran >= words + 2 + 3  # the template around the text, 3 virtual tokens
    chunks = list(
        client.completions.create(
            model="story",
            prompt="good",
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage.prompt_tokens == ran
    text = "".join(c.choices[0].text for c in chunks[:-1] if c.choices)
    assert last.usage.completion_tokens == _alone(engine, "story", "good", max_tokens=3)["tokens"]
    assert text == _alone(engine, "story", "good", max_tokens=3)["text"]
    plain = client.completions.create(model="story", prompt="good", max_tokens=3)
    assert plain.usage.prompt_tokens == ran
    chat = client.chat.completions.create(
        model="movie",
        messages=[{"role": "user", "content": "good movie"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert list(chat)[-1].usage.prompt_tokens == _ran(
        engine, prompt_files["movie"][1], "good movie"
    )
    without = list(client.completions.create(model="story", prompt="good", stream=True))
    assert all(c.usage is None for c in without)


def test_completion_logprobs_greedy_are_the_models_top_choices(client, engine):
    got = client.completions.create(model="story", prompt="good", max_tokens=4, logprobs=3)
    lp = got.choices[0].logprobs
    assert "".join(lp.tokens) == got.choices[0].text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 3 and logprob < 0
        assert logprob == pytest.approx(max(top.values()))  # greedy: the likeliest token
        assert top[token] == pytest.approx(logprob)
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-5
    assert got.choices[0].text == _alone(engine, "story", "good", max_tokens=4)["text"]


def test_logprobs_stop_where_a_stop_sequence_cut_the_text(client):
    """The tiny model says ": : : ...": a stop at " : :" leaves ":", and the log-probs
    only its token (the decoder ran 3 tokens before it saw the stop sequence)."""
    full = client.completions.create(model="story", prompt="good", max_tokens=8, logprobs=1)
    assert full.choices[0].logprobs.tokens[:3] == [":", " :", " :"]
    cut = client.completions.create(
        model="story", prompt="good", max_tokens=8, logprobs=1, stop=[" : :"]
    ).choices[0]
    assert cut.text == ":" and cut.finish_reason == "stop"
    assert cut.logprobs.tokens == [":"] and len(cut.logprobs.token_logprobs) == 1


def test_sampled_logprobs_come_from_the_distribution_drawn_from(client):
    """top_k 2: the two kept tokens share all the mass, the third alternative was cut."""
    got = client.completions.create(
        model="story",
        prompt="good",
        max_tokens=5,
        logprobs=3,
        temperature=1.5,
        seed=3,
        extra_body={"top_k": 2},
    )
    lp = got.choices[0].logprobs
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        kept = sorted(top.values(), reverse=True)
        assert sum(math.exp(v) for v in kept[:2]) == pytest.approx(1.0, abs=1e-4)
        assert kept[2] == -9999.0
        assert top[token] == pytest.approx(logprob) and logprob > -9999.0


def test_chat_logprobs(client):
    got = client.chat.completions.create(
        model="story",
        messages=[{"role": "user", "content": "good"}],
        max_tokens=3,
        logprobs=True,
        top_logprobs=2,
    )
    content = got.choices[0].logprobs.content
    assert "".join(t.token for t in content) == got.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 for t in content)
    assert all(t.logprob == pytest.approx(t.top_logprobs[0].logprob) for t in content)
    assert bytes(content[0].bytes).decode() == content[0].token
    bare = client.chat.completions.create(
        model="story", messages=[{"role": "user", "content": "good"}], max_tokens=2
    )
    assert bare.choices[0].logprobs is None
    null = client.chat.completions.create(
        model="story", messages=[{"role": "user", "content": "good"}], max_tokens=2, logprobs=None
    )  # an explicit null is the default, not a 422
    assert null.choices[0].logprobs is None


def test_n_choices_with_sampling(client, engine):
    got = client.completions.create(
        model="story", prompt="good", max_tokens=6, n=3, temperature=1.5, seed=5
    )
    assert [c.index for c in got.choices] == [0, 1, 2]
    for j, c in enumerate(got.choices):
        sampling = check_sampling(temperature=1.5, seed=5 + j)
        assert c.text == _alone(engine, "story", "good", max_tokens=6, sampling=sampling)["text"]
    assert got.usage.completion_tokens == sum(
        _alone(engine, "story", "good", max_tokens=6, sampling=check_sampling(1.5, seed=5 + j))[
            "tokens"
        ]
        for j in range(3)
    )
    with pytest.raises(openai.BadRequestError, match="n must be an integer from 1 to 16"):
        client.completions.create(model="story", prompt="good", n=17)


@pytest.mark.parametrize(
    "extra,field",
    [
        ({"echo": True}, "echo"),
        ({"suffix": "end"}, "suffix"),
        ({"logit_bias": {"5": 10}}, "logit_bias"),
        ({"best_of": 3}, "best_of"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ],
)
def test_unimplemented_completion_fields_are_a_400_naming_them(client, extra, field):
    with pytest.raises(openai.BadRequestError, match=f"{field}: not supported"):
        client.completions.create(model="story", prompt="good", max_tokens=2, **extra)


def test_unimplemented_chat_fields_are_a_400_naming_them(client):
    messages = [{"role": "user", "content": "good"}]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    refused = [
        ({"tools": [tool]}, "tools: not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format: not supported"),
        ({"extra_body": {"guided_json": {}}}, "guided_json: not supported"),
        ({"logprobs": True, "stream": True}, "logprobs: not given in a stream"),
        ({"top_logprobs": 2}, "top_logprobs: needs logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs must be an integer from 0"),
    ]
    for extra, message in refused:
        with pytest.raises(openai.BadRequestError, match=message):
            client.chat.completions.create(model="story", messages=messages, **extra)
    with pytest.raises(openai.BadRequestError, match="classification task"):
        client.chat.completions.create(model="movie", messages=messages, logprobs=True)
    # fields at their default, and informational ones, are not refused
    ok = client.chat.completions.create(
        model="story", messages=messages, max_tokens=2, user="me", presence_penalty=0, tools=[]
    )
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_models_retrieve_and_a_versioned_model_name(client, engine):
    assert client.models.retrieve("story").id == "story"
    assert client.models.retrieve("story@1").id == "story@1"
    with pytest.raises(openai.NotFoundError, match="no version"):
        client.models.retrieve("story@2")
    with pytest.raises(openai.NotFoundError, match="unknown task"):
        client.models.retrieve("nope")
    pinned = client.completions.create(model="story@1", prompt="good", max_tokens=3)
    assert pinned.model == "story@1"
    assert pinned.choices[0].text == _alone(engine, "story", "good", max_tokens=3)["text"]
    with pytest.raises(openai.NotFoundError, match="no version"):
        client.completions.create(model="story@9", prompt="good")


def test_docs_page_needs_no_cdn_and_errors_are_documented(live):
    page = httpx.get(f"{live}/docs").text
    assert "cdn" not in page.lower() and "/docs-assets/swagger-ui-bundle.js" in page
    script = httpx.get(f"{live}/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    assert httpx.get(f"{live}/docs-assets/swagger-ui.css").status_code == 200
    schema = httpx.get(f"{live}/openapi.json").json()
    post = schema["paths"]["/v1/completions"]["post"]["responses"]
    for status in ("400", "404", "422"):
        ref = post[status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorBody")
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    error = schema["components"]["schemas"]["ErrorBody"]
    assert error["properties"]["error"]["$ref"].endswith("/ErrorDetail")


def test_metrics_have_help_lines_and_counters_typed_as_counters(live):
    httpx.post(f"{live}/classify", json={"inputs": [{"task": "movie", "text": "good"}]})
    httpx.post(f"{live}/classify", json={"inputs": [{"task": "movie", "text": "good"}]})
    text = httpx.get(f"{live}/metrics").text
    assert "# TYPE softprompt_cache_hits counter" in text
    assert "# TYPE softprompt_cache_bytes gauge" in text
    assert "# TYPE softprompt_requests_total counter" in text
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    helped = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    assert families and set(families) == helped


def test_serve_prints_the_url_it_listens_on(store, llama_folder, monkeypatch, capsys):
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    argv = ["serve", "--store", str(store.root), "--backbone", str(llama_folder)]
    assert cli.main([*argv, "--port", "8123"]) == 0
    out = capsys.readouterr().out
    assert "listening on http://127.0.0.1:8123 (OpenAI base URL http://127.0.0.1:8123/v1" in out
