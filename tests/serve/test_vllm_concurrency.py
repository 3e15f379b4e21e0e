"""How many requests the vLLM gateway keeps in flight, against a fake vLLM that counts.

A real vLLM batches every request it holds; a gateway that sends fewer at a time splits a
burst into waves (measured: 64 concurrent generations through `softprompt serve --engine
vllm` took 1.5x as long as sending them to vLLM directly, when the gateway held 32)."""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from softprompt.backbones import load_backbone
from softprompt.cli import main
from softprompt.model import PromptModel
from softprompt.serve.commands import _vllm_router
from softprompt.serve.engine import Engine
from softprompt.serve.store import PromptStore
from softprompt.tasks import TaskConfig

BURST = 48  # more than the 32 connections the gateway used to hold


class FakeVllm(ThreadingHTTPServer):
    """Serves `folder`; each completion waits (up to 3 s) until BURST are in flight, so
    the largest number seen in flight is what the gateway sends at once."""

    daemon_threads = True
    # socketserver's default backlog of 5 overflowed on a loaded machine when the burst
    # connected at once, and the kernel reset connections (a CI run failed so)
    request_queue_size = 4 * BURST

    def __init__(self, folder: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.folder, self.in_flight, self.most = folder, 0, 0
        self.lock, self.full = threading.Lock(), threading.Event()


class _Handler(BaseHTTPRequestHandler):
    server: FakeVllm

    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply({"data": [{"id": "m", "root": str(self.server.folder)}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        fake = self.server
        with fake.lock:
            fake.in_flight += 1
            fake.most = max(fake.most, fake.in_flight)
            if fake.in_flight >= BURST:
                fake.full.set()
        fake.full.wait(3.0)
        with fake.lock:
            fake.in_flight -= 1
        choice = {"text": " ok", "token_ids": [5], "finish_reason": "length"}
        self._reply({"choices": [choice]})


@pytest.fixture()
def fake_vllm(llama_folder):
    server = FakeVllm(llama_folder.resolve())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _router(folder: Path, url: str, tmp_path: Path, concurrency: int):
    backbone = load_backbone(str(folder))
    model = PromptModel(backbone, TaskConfig(kind="generation"), "soft-prompt", {"n_tokens": 2})
    store = PromptStore(tmp_path / "store")
    store.add("story", model.save(tmp_path / "story.safetensors"))
    args = argparse.Namespace(vllm_url=url, vllm_start=False, vllm_concurrency=concurrency)
    router, _ = _vllm_router(args, Engine(backbone, store))
    router.load_all()
    return router


def test_the_gateway_sends_a_whole_burst_to_vllm_at_once(fake_vllm, llama_folder, tmp_path):
    url = f"http://127.0.0.1:{fake_vllm.server_address[1]}"
    router = _router(llama_folder, url, tmp_path, concurrency=256)
    try:
        requests = [router.request("story", f"text {i}", generate=True) for i in range(BURST)]
        start = time.monotonic()
        answers = [job.result() for job in router.direct(requests)]
    finally:
        router.close()
    assert [a["text"] for a in answers] == [answers[0]["text"]] * BURST
    assert fake_vllm.most == BURST  # one wave, not 32 and then 16
    assert time.monotonic() - start < 3.0  # nobody waited for the fake's timeout


def test_the_gateway_keeps_to_its_concurrency(fake_vllm, llama_folder, tmp_path):
    url = f"http://127.0.0.1:{fake_vllm.server_address[1]}"
    router = _router(llama_folder, url, tmp_path, concurrency=8)
    try:
        requests = [router.request("story", f"text {i}", generate=True) for i in range(12)]
        for job in router.direct(requests):
            job.result()
    finally:
        router.close()
    assert fake_vllm.most == 8


def test_a_concurrency_under_one_is_refused(capsys):
    code = main(["serve", "--engine", "vllm", "--vllm-url", "http://x", "--vllm-concurrency", "0"])
    assert code == 2
    assert "--vllm-concurrency 0: give 1 or more" in capsys.readouterr().err
