"""A small client for `softprompt serve` (standard library only).

    from softprompt.client import Client
    client = Client("http://127.0.0.1:8000")
    client.classify([("movie", "A gorgeous, heartfelt film.")])
    # [{'label': 'positive', 'scores': {...}, 'task': 'movie', 'version': 1}]
    client.generate([("summary", "some text")], max_tokens=20, temperature=0.7, seed=1)
    client.classify_images([("fashion", "shoe.png")])
    for piece in client.stream("summary", "some text"): print(piece, end="")

Errors come back as `ServerError` carrying the HTTP status and the server's message.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from softprompt.errors import SoftPromptError


class ServerError(SoftPromptError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class Client:
    def __init__(
        self, url: str = "http://127.0.0.1:8000", *, token: str | None = None, timeout: float = 60
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _open(self, method: str, path: str, body: bytes | None = None, kind: str = "json"):
        headers = {"Content-Type": "application/json" if kind == "json" else kind}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, body, headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = exc.reason
            raise ServerError(exc.code, str(message)) from None

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        with self._open(method, path, body) as response:
            return json.loads(response.read())

    def classify(self, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """(task, text) pairs -> one {label, scores, task, version} per pair, in order."""
        inputs = [{"task": t, "text": x} for t, x in pairs]
        return self._call("POST", "/classify", {"inputs": inputs})["results"]

    def classify_images(self, pairs: list[tuple[str, str | bytes]]) -> list[dict[str, Any]]:
        """(task, PNG/JPEG path or bytes) pairs -> one {label, scores, ...} per pair."""
        inputs = []
        for task, image in pairs:
            data = image if isinstance(image, bytes) else Path(image).read_bytes()
            inputs.append({"task": task, "image": base64.b64encode(data).decode()})
        return self._call("POST", "/classify", {"inputs": inputs})["results"]

    def generate(
        self, pairs: list[tuple[str, str]], max_tokens: int | None = None, **sampling: Any
    ) -> list[dict[str, Any]]:
        """(task, text) pairs -> one {text, finish_reason, task, version} per pair.
        `sampling`: temperature, top_p, top_k, seed, stop (greedy when left out)."""
        inputs = [{"task": t, "text": x, "max_tokens": max_tokens, **sampling} for t, x in pairs]
        return self._call("POST", "/generate", {"inputs": inputs})["results"]

    def stream(self, task: str, text: str, max_tokens: int = 16, **sampling: Any) -> Iterator[str]:
        """Pieces of generated text as the server decodes them (OpenAI SSE underneath)."""
        payload = {
            "model": task,
            "prompt": text,
            "max_tokens": max_tokens,
            "stream": True,
            **sampling,
        }
        with self._open("POST", "/v1/completions", json.dumps(payload).encode()) as response:
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise ServerError(500, chunk["error"]["message"])
                piece = chunk["choices"][0]["text"]
                if piece:
                    yield piece

    def tasks(self) -> list[dict[str, Any]]:
        return self._call("GET", "/tasks")["tasks"]

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def upload(self, task: str, path: str) -> dict[str, Any]:
        """Hot-load a prompt file as TASK's next version (needs the server's admin token)."""
        with (
            open(path, "rb") as handle,
            self._open(
                "POST", f"/prompts?task={task}", handle.read(), "application/octet-stream"
            ) as response,
        ):
            return json.loads(response.read())["loaded"]

    def remove(self, task: str) -> list[str]:
        return self._call("DELETE", f"/prompts/{task}")["removed"]
