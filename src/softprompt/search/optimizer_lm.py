"""Language models that propose prompts (OPRO's optimizer LM): local or over HTTP.

* `LocalLM`: any causal LM softprompt loads (default `smollm2-135m`, the
  SmolLM2-135M-Instruct weights), prompted through its chat template when the
  tokenizer has one; greedy at temperature 0, else sampled from a seeded generator.
* `EndpointLM`: any OpenAI-compatible `/chat/completions` endpoint given by URL
  (vLLM, llama.cpp server, ...). The key, if any, is read from an environment
  variable named by the caller, never from a file or the command line.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Protocol

import torch

from softprompt.backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from softprompt.errors import ConfigError
from softprompt.inject import make_injector
from softprompt.inject.decode import decode, greedy

Messages = list[dict[str, str]]


class OptimizerLM(Protocol):
    def complete(self, messages: Messages, *, temperature: float, max_tokens: int) -> str:
        """The assistant's reply to a chat."""
        ...


class LocalLM:
    def __init__(self, backbone: Backbone | str = DEFAULT_BACKBONE, seed: int = 0) -> None:
        self.backbone = load_backbone(backbone) if isinstance(backbone, str) else backbone
        if self.backbone.spec.kind != "causal-lm":
            raise ConfigError(f"search.optimizer: {self.backbone.name} is not a causal LM")
        self.generator = torch.Generator().manual_seed(seed)
        self.injector = make_injector(self.backbone)

    def _prompt_ids(self, messages: Messages) -> list[int]:
        tok = self.backbone.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = ids if isinstance(ids, list) else ids["input_ids"]  # a BatchEncoding in v5
            return [int(i) for i in ids]
        text = "\n\n".join(m["content"] for m in messages) + "\n\n"
        return list(tok(text)["input_ids"])

    def complete(self, messages: Messages, *, temperature: float, max_tokens: int) -> str:
        """Token-by-token decoding on the cache (greedy, or sampled at `temperature`), through
        the one decoding loop; the chat template's ids are the whole input (no BOS added)."""

        def sample(logits: torch.Tensor, rows: list[int]) -> list[int]:  # (1, V) -> one id
            probs = (logits[0].float().cpu() / temperature).softmax(-1)
            return [int(torch.multinomial(probs, 1, generator=self.generator))]

        tokenizer = self.backbone.tokenizer
        stops = {*tokenizer.all_special_ids, self.backbone.spec.eos_token_id} - {None}
        (row,) = decode(
            self.injector,
            None,
            [self._prompt_ids(messages)],
            pad_id=self.backbone.spec.pad_token_id,
            max_new_tokens=[max_tokens],
            stop_ids=stops,
            choose=sample if temperature > 0 else greedy,
        )
        return tokenizer.decode(row.tokens, skip_special_tokens=True)


class EndpointLM:
    def __init__(
        self, url: str, model: str = "default", api_key_env: str | None = None, timeout: float = 60
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"search.optimizer: {url!r} is not an http(s) URL")
        self.url = url.rstrip("/")
        if not self.url.endswith("/chat/completions"):
            self.url += "/chat/completions"
        self.model, self.timeout = model, timeout
        self.key = os.environ.get(api_key_env) if api_key_env else None

    def complete(self, messages: Messages, *, temperature: float, max_tokens: int) -> str:
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"search.optimizer: {self.url} did not answer ({exc})") from None
        try:
            return str(reply["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise ConfigError(
                f"search.optimizer: {self.url} answered without choices[0].message.content"
            ) from None


def optimizer_lm(name: str | Backbone, seed: int = 0) -> OptimizerLM:
    """A URL gives an endpoint; anything else is a backbone softprompt can load."""
    if isinstance(name, str) and name.startswith(("http://", "https://")):
        return EndpointLM(name)
    return LocalLM(name, seed=seed)
