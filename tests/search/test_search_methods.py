"""Every search method: seeded, beats the seed template on a toy task, stays in budget."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from toydata import LABELS, toy_examples

from softprompt.errors import ConfigError
from softprompt.search import TaskSpec, search, search_methods
from softprompt.search.edits import random_edit
from softprompt.search.optimizer_lm import EndpointLM, LocalLM

SEED_TEMPLATE = "review : {text} sentiment :"
BUDGET = 40


@pytest.fixture(scope="module")
def spec(backbones) -> TaskSpec:
    return TaskSpec(
        backbone=backbones["tiny_llama"],
        labels=list(LABELS),
        template=SEED_TEMPLATE,
        examples=toy_examples(16, seed=5),
        train=toy_examples(32, seed=1),
    )


def _options(method: str, spec: TaskSpec) -> dict:
    if method == "opro":  # the tiny model itself as the optimizer LM: random but seeded words
        return {"optimizer": spec.backbone, "max_tokens": 6}
    return {}


def test_registry_names_every_method():
    assert search_methods() == ["autoprompt", "greedy-edit", "opro", "random-edit", "rlprompt"]


@pytest.mark.parametrize("method", ["random-edit", "greedy-edit", "autoprompt", "rlprompt", "opro"])
def test_method_beats_the_seed_within_budget_and_is_seeded(spec, method):
    first = search(spec, method=method, budget=BUDGET, seed=0, options=_options(method, spec))
    again = search(spec, method=method, budget=BUDGET, seed=0, options=_options(method, spec))
    assert first.evaluations <= BUDGET
    assert len(first.ranked) <= BUDGET
    assert first.best.score.key > first.seed_score.key  # a strictly better prompt was found
    assert "{text}" in first.best.template
    assert [r.template for r in first.ranked] == [r.template for r in again.ranked]
    assert first.ranked == sorted(first.ranked, key=lambda r: r.score.key, reverse=True)


def test_unknown_method_and_option_are_named(spec):
    with pytest.raises(ConfigError, match="autoprompt"):
        search(spec, method="beam", budget=5)
    with pytest.raises(ConfigError, match="trigers"):
        search(spec, method="autoprompt", budget=5, options={"trigers": 3})


def test_budget_of_one_scores_only_the_seed(spec):
    result = search(spec, method="greedy-edit", budget=1, seed=0)
    assert result.evaluations == 1 and [r.template for r in result.ranked] == [SEED_TEMPLATE]


def test_random_edit_keeps_the_slot():
    import random

    rng = random.Random(0)
    words = ["good", "movie"]
    text = SEED_TEMPLATE
    for _ in range(200):
        text = random_edit(text, words, rng)
        assert text.count("{text}") == 1


# --- OPRO's optimizer LMs ----------------------------------------------------------------


class _FakeOpenAI(BaseHTTPRequestHandler):
    """An in-process OpenAI-compatible /chat/completions endpoint (never the network)."""

    replies = ["good movie", "bad film", "the story was great", "it was", "Instruction: fun"]
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "body": body})
        reply = self.replies[(len(self.seen) - 1) % len(self.replies)]
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):
        pass


@pytest.fixture()
def endpoint():
    _FakeOpenAI.seen = []
    server = HTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_opro_through_an_openai_compatible_endpoint(spec, endpoint):
    result = search(
        spec, method="opro", budget=12, seed=0, options={"optimizer": endpoint, "per_step": 2}
    )
    calls = _FakeOpenAI.seen
    assert calls and all(c["path"] == "/v1/chat/completions" for c in calls)
    assert result.lm_calls == len(calls) and result.evaluations <= 12
    first, later = calls[0]["body"], calls[-1]["body"]
    assert first["messages"][0]["role"] == "user" and "Label:" in first["messages"][0]["content"]
    assert "Accuracy:" in later["messages"][0]["content"]  # past prompts shown with scores
    templates = {r.template for r in result.ranked}
    assert "fun\n" + SEED_TEMPLATE in templates  # the "Instruction:" label was stripped
    assert "good movie\n" + SEED_TEMPLATE in templates


def test_endpoint_errors_are_one_line(spec):
    with pytest.raises(ConfigError, match="did not answer"):
        EndpointLM("http://127.0.0.1:9/v1", timeout=2).complete(
            [{"role": "user", "content": "hi"}], temperature=0, max_tokens=4
        )
    with pytest.raises(ConfigError, match="URL"):
        EndpointLM("ftp://example")


def test_local_lm_greedy_is_deterministic(llama):
    lm = LocalLM(llama)
    chat = [{"role": "user", "content": "write a review"}]
    one = lm.complete(chat, temperature=0, max_tokens=5)
    assert one == lm.complete(chat, temperature=0, max_tokens=5) and one.strip()


def test_local_lm_uses_the_chat_template():
    from softprompt.backbones.tiny import tiny_llama

    backbone = tiny_llama()  # a fresh copy: the session's tokenizer stays as it is
    backbone.tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }} answer :{% endfor %}"
    )
    lm = LocalLM(backbone)
    ids = lm._prompt_ids([{"role": "user", "content": "good movie"}])
    assert backbone.tokenizer.decode(ids) == "good movie answer :"
    assert lm.complete([{"role": "user", "content": "good"}], temperature=0.7, max_tokens=3)
