"""/v1/chat/completions keeps the conversation for a task trained inside the backbone's
chat template (task.chat_template): every message is rendered, not only the last."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from softprompt.backbones.tiny import tiny_llama
from softprompt.model import PromptModel
from softprompt.serve.app import create_app
from softprompt.serve.engine import Engine
from softprompt.serve.store import PromptStore
from softprompt.tasks import TaskConfig
from softprompt.tasks.chat import render

CHAT = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}you{% elif m['role'] == 'assistant' %}i{% else %}topic{% endif %}"
    " : {{ m['content'] }} . {% endfor %}{% if add_generation_prompt %}answer :{% endif %}"
)
URL = "/v1/chat/completions"
HISTORY = [
    {"role": "system", "content": "movie review"},
    {"role": "user", "content": "bad acting"},
    {"role": "assistant", "content": "negative"},
    {"role": "user", "content": "good movie"},
]


@pytest.fixture(scope="module")
def chat_setup(tmp_path_factory):
    """A tiny llama with a chat template, serving a chat-template classifier and generator."""
    backbone = tiny_llama()
    backbone.tokenizer.chat_template = CHAT
    store = PromptStore(tmp_path_factory.mktemp("chat") / "store")
    models = {}
    for name, kind in [("chat", "classification"), ("chatgen", "generation")]:
        config = TaskConfig(
            kind=kind, labels=["negative", "positive"], chat_template=True, max_new_tokens=3
        )
        model = PromptModel(backbone, config, method="soft-prompt", method_options={"n_tokens": 2})
        with torch.no_grad():
            for p in model.method.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
        store.add(name, model.save(tmp_path_factory.mktemp(name) / f"{name}.safetensors"))
        models[name] = model
    engine = Engine(backbone, store, cache_bytes=1 << 20, max_input_tokens=64)
    engine.load_all()
    with TestClient(create_app(engine)) as client:
        yield client, models, backbone


def _scores(client, messages, model="chat"):
    body = {"model": model, "messages": messages, "max_tokens": 3}
    response = client.post(URL, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_every_message_is_rendered_and_answered(chat_setup):
    client, models, backbone = chat_setup
    body = _scores(client, HISTORY)
    conversation = render(backbone.tokenizer, HISTORY, drop_bos=True)
    want = models["chat"].predict([conversation])[0]
    assert body["choices"][0]["message"]["content"] == want["label"]
    assert body["choices"][0]["scores"] == pytest.approx(want["scores"], abs=1e-5)
    alone = _scores(client, HISTORY[-1:])["choices"][0]["scores"]
    assert alone != pytest.approx(want["scores"], abs=1e-6)  # the history changed the answer
    ran = len(backbone.tokenizer(conversation, add_special_tokens=False)["input_ids"])
    assert body["usage"]["prompt_tokens"] == ran + 2 + 1  # + virtual tokens + BOS


def test_a_plain_text_is_one_user_message(chat_setup):
    client, _, _ = chat_setup
    completion = client.post("/v1/completions", json={"model": "chat", "prompt": "good movie"})
    chat = _scores(client, [{"role": "user", "content": "good movie"}])
    assert completion.json()["choices"][0]["scores"] == pytest.approx(
        chat["choices"][0]["scores"], abs=1e-6
    )


def test_generation_keeps_the_conversation(chat_setup):
    client, models, backbone = chat_setup
    body = _scores(client, HISTORY, model="chatgen")
    conversation = render(backbone.tokenizer, HISTORY, drop_bos=True)
    want = models["chatgen"].predict([conversation])[0]["text"]
    assert body["choices"][0]["message"]["content"] == want


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        ([{"role": "user", "content": "good"}, {"role": "assistant", "content": "x"}], "last"),
        ([{"role": "tool", "content": "x"}, {"role": "user", "content": "good"}], "role"),
    ],
)
def test_a_conversation_the_task_cannot_answer_is_refused(chat_setup, messages, says):
    client, _, _ = chat_setup
    response = client.post(URL, json={"model": "chat", "messages": messages})
    assert response.status_code == 400 and says in response.json()["error"]["message"]


def test_the_openai_client_streams_a_conversation(chat_setup):
    """The official client, streaming with usage: the same text as the whole answer."""
    openai = pytest.importorskip("openai")  # in the dev extra: installed in CI
    client, _, _ = chat_setup
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)
    whole = _scores(client, HISTORY, model="chatgen")
    chunks = list(
        api.chat.completions.create(
            model="chatgen",
            messages=HISTORY,
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1].usage.prompt_tokens == whole["usage"]["prompt_tokens"]
