"""Input-level prompts answered by a vLLM server, through its OpenAI HTTP API.

vLLM has no prompt adapters, but its completions endpoint takes `prompt_embeds`: a
base64 `torch.save`d (T, d) tensor used in place of token ids (`--enable-prompt-embeds`).
A soft prompt, an exported P-tuning prompt or an MPT prompt lives in the input
embeddings, so each request is sent as [BOS] + prompt vectors + embed(filled template),
built by `softprompt.inject.sequence` exactly as softprompt's own injector runs it. The
tensors are produced here; vLLM loads them with `weights_only=True`; nothing read from a
user is ever unpickled. K/V prefixes (prefix tuning, deep prompts) are not embeddings and
stay on softprompt's own engine (`NotForVllm`).

Classification asks for one token restricted to the label words' first tokens
(`allowed_token_ids`) and reads the log-probs of exactly those ids (`logprob_token_ids`,
vLLM >= 0.32). vLLM returns them before sampling processors (its default
`--logprobs-mode raw_logprobs`), i.e. log-softmax over the whole vocabulary, which is what
softprompt's verbalizer scores; with `processed_logprobs` single-token words still give the
same class distribution (a shift of every score). Label words of several tokens are scored
exactly as the sum of their tokens' full-vocabulary log-probs: one request per distinct
word prefix (context + prefix, asking for the log-probs of every token that follows that
prefix in some word), sent concurrently and cached by vLLM's prefix cache.

The folder vLLM serves must be the backbone the prompts were trained on: the engine
loads that same folder (for the tokenizer and the input embeddings) and checks every
prompt's fingerprint against it (`RefusedTask`, HTTP 409). A vLLM that cannot be reached
raises `VllmUnavailable` (the gateway answers 503), never a guess.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from softprompt.backbones import Backbone, load_backbone
from softprompt.data import Example
from softprompt.errors import BackboneError, PromptFileError, SoftPromptError
from softprompt.inject import Prompt
from softprompt.inject.sequence import input_sequence
from softprompt.model import PromptModel, load_prompt_meta
from softprompt.serve.engine import RefusedTask, UnknownTask
from softprompt.serve.sampling import Sampling
from softprompt.serve.store import Entry
from softprompt.serve.vllm_server import INSTALL as INSTALL
from softprompt.serve.vllm_server import MAX_TOKEN_IDS, VENV, VllmUnavailable, model_folder
from softprompt.serve.vllm_server import server_command as server_command
from softprompt.serve.vllm_server import start_server as start_server
from softprompt.serve.vllm_server import stop_server as stop_server
from softprompt.serve.vllm_server import vllm_python as vllm_python
from softprompt.tasks.classification import VerbalizerTask
from softprompt.tasks.generation import GenerationTask


class VllmError(SoftPromptError):
    """vLLM refused a request it was sent (a 4xx): the message is vLLM's own."""


class NotForVllm(SoftPromptError):
    """A prompt vLLM cannot take (a key/value prefix, an encoder, a linear head)."""


# -- the HTTP side -----------------------------------------------------------------------


def encode_embeds(embeds: torch.Tensor) -> str:
    """(T, d) -> base64 of `torch.save` bytes: the `prompt_embeds` format vLLM loads
    (renderers/embed_utils.py: `torch.load(..., weights_only=True)`, cast to its dtype)."""
    buffer = io.BytesIO()
    torch.save(embeds.detach().contiguous().cpu(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class VllmClient:
    """POSTs to one vLLM server; transport failures become `VllmUnavailable`."""

    def __init__(self, url: str, *, timeout: float = 600.0, connections: int = 64) -> None:
        self.url = url.rstrip("/")
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.http = httpx.Client(base_url=self.url, timeout=timeout, limits=limits)

    def _unavailable(self, exc: Exception) -> VllmUnavailable:
        return VllmUnavailable(
            f"vLLM at {self.url} is not answering ({type(exc).__name__}: {exc}); start it "
            "(or wait for it to finish loading) and retry: "
            f"{VENV}/bin/python -m vllm.entrypoints.openai.api_server --model FOLDER "
            "--enable-prompt-embeds"
        )

    def _check(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            message = response.json().get("error", {}).get("message") or response.text
        except ValueError:
            message = response.text
        if response.status_code >= 500:
            raise VllmUnavailable(f"vLLM at {self.url} failed ({response.status_code}): {message}")
        raise VllmError(f"vLLM refused the request ({response.status_code}): {message}")

    def get(self, path: str) -> Any:
        try:
            response = self.http.get(path)
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None
        self._check(response)
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.http.post(path, json=body)
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None
        self._check(response)
        return response.json()

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Server-sent events of a `stream: true` request, one parsed chunk each."""
        try:
            with self.http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response)
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: ") :])
                    if "error" in chunk:
                        raise VllmUnavailable(f"vLLM failed mid-stream: {chunk['error']}")
                    yield chunk
        except httpx.TransportError as exc:
            raise self._unavailable(exc) from None

    def close(self) -> None:
        self.http.close()


# -- tasks -------------------------------------------------------------------------------


@dataclass(eq=False)
class VllmTask:
    """One served task: its model (tokenizer, template, verbalizer) and framed prompt.
    A request holds the VllmTask it arrived for, so a hot swap never changes its answer."""

    name: str
    model: PromptModel
    prompt: Prompt
    labels: list[str] = field(default_factory=list)
    entry: Entry | None = None  # the store version it was loaded from (None: a bare file)

    @property
    def generates(self) -> bool:
        return bool(self.model.task.generates)


def _framed_prompt(name: str, model: PromptModel) -> Prompt:
    """The prompt as the task places it, refused when vLLM cannot take it."""
    if model.backbone.spec.kind != "causal-lm":
        raise NotForVllm(f"task {name!r}: vLLM serves causal LMs here, not an encoder")
    if not isinstance(model.task, VerbalizerTask | GenerationTask):
        raise NotForVllm(
            f"task {name!r}: a {type(model.task).__name__} (trained head) cannot run on "
            "vLLM; serve it with softprompt's own engine"
        )
    with torch.no_grad():
        prompt = model.prompt()
    if prompt.kv is not None:
        raise NotForVllm(
            f"task {name!r}: {model.method_name} is a per-layer key/value prefix, which vLLM "
            "cannot take as input embeddings; serve it with softprompt's own engine"
        )
    return Prompt(
        embeds=None if prompt.embeds is None else prompt.embeds.detach().float(),
        inline=None if prompt.inline is None else prompt.inline.detach().float(),
    )


def takes(model: PromptModel) -> bool:
    """Whether vLLM can answer this model's task (an input-level prompt on a causal LM
    with label words or generation); the others stay on softprompt's own engine."""
    try:
        _framed_prompt("task", model)
    except NotForVllm:
        return False
    return True


def vllm_sampling(sampling: Sampling) -> dict[str, Any]:
    """softprompt's checked sampling parameters as vLLM's completion fields."""
    body: dict[str, Any] = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    return body


def _word_prefixes(words: list[list[int]]) -> dict[tuple[int, ...], list[int]]:
    """Every distinct proper prefix of the label words -> the tokens that follow it."""
    follow: dict[tuple[int, ...], list[int]] = {}
    for word in words:
        for j, token in enumerate(word):
            nxt = follow.setdefault(tuple(word[:j]), [])
            if token not in nxt:
                nxt.append(token)
    return follow


def _neutral(body: dict[str, Any]) -> dict[str, Any]:
    """Sampling knobs set explicitly, so a model's generation_config defaults (top_p,
    repetition penalty...) never reach scores or greedy text."""
    return {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, **body}


# -- the engine --------------------------------------------------------------------------


class VllmEngine:
    """Tasks with input-level prompts, answered by the vLLM server at `url` that serves
    `folder` (the backbone's HF folder, loaded here too for its tokenizer and embeddings)."""

    def __init__(
        self,
        folder: str | Path,
        url: str,
        *,
        backbone: Backbone | None = None,
        timeout: float = 600.0,
        workers: int = 32,
        check_served_folder: bool = True,
    ) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.backbone = backbone if backbone is not None else load_backbone(str(self.folder))
        self.client = VllmClient(url, timeout=timeout, connections=workers)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vllm")
        self.tasks: dict[str, VllmTask] = {}
        self._embedding = threading.Lock()
        self.model_id = self._served_model(check_served_folder)

    def _served_model(self, check_folder: bool) -> str:
        """The model id vLLM serves; refused when vLLM loaded another folder."""
        models = self.client.get("/v1/models").get("data") or []
        if not models:
            raise VllmUnavailable(f"vLLM at {self.client.url} serves no model yet; retry")
        model = models[0]
        root = Path(str(model.get("root") or model["id"])).expanduser()
        if check_folder and root.resolve() != self.folder:
            raise BackboneError(
                f"vLLM at {self.client.url} serves {root}, but the prompts are checked against "
                f"{self.folder}; start vLLM with --model {self.folder} (or point the engine at "
                "the folder vLLM serves)"
            )
        return str(model["id"])

    # -- tasks ---------------------------------------------------------------------------
    def add(self, name: str, path: str | Path, *, entry: Entry | None = None) -> VllmTask:
        """Serve the prompt file at `path` as task `name` (store version `entry`): its
        fingerprint must be the served folder's (`RefusedTask` otherwise), its prompt an
        input-level one."""
        try:
            model = PromptModel.load(path, self.backbone).eval()
        except PromptFileError as exc:
            raise RefusedTask(f"task {name!r}: {exc}") from None
        return self.adopt(name, model, entry)

    def adopt(self, name: str, model: PromptModel, entry: Entry | None = None) -> VllmTask:
        """Serve an already loaded model as task `name` (`NotForVllm` when vLLM cannot
        take its prompt); it replaces the task's previous version for new requests."""
        prompt = _framed_prompt(name, model)
        labels = [] if model.task.generates else list(model.task.config.labels)
        task = VllmTask(name, model, prompt, labels, entry)
        self.tasks[name] = task
        return task

    def get(self, name: str | VllmTask) -> VllmTask:
        """The task `name` serves now, or the given task itself (a request's bound version)."""
        if isinstance(name, VllmTask):
            return name
        task = self.tasks.get(name)
        if task is None:
            raise UnknownTask(f"no task {name!r} on the vLLM engine; known: {sorted(self.tasks)}")
        return task

    def embeds(
        self, name: str | VllmTask, text: str, tail: list[int] | None = None
    ) -> torch.Tensor:
        """(T, d) input embeddings of `text` framed by the task (plus `tail` ids after it)."""
        task = self.get(name)
        with self._embedding:  # one tokenizer and embedding table shared by request threads
            ids, virtual = task.model.task.rows([Example(text=text, label="")])
            ids, virtual = ids[0] + list(tail or []), virtual[0] + [-1] * len(tail or [])
            return input_sequence(task.model.injector, task.prompt, ids, virtual)

    def _completion(self, embeds: torch.Tensor, **body: Any) -> dict[str, Any]:
        request = {"model": self.model_id, "prompt_embeds": encode_embeds(embeds), **body}
        return self.client.post("/v1/completions", request)

    # -- classification ------------------------------------------------------------------
    def _token_logprobs(self, name: str | VllmTask, text: str, prefix: list[int], ids: list[int]):
        """Full-vocabulary log-probs of `ids` as the next token after text + prefix."""
        if len(ids) > MAX_TOKEN_IDS:
            raise NotForVllm(
                f"task {self.get(name).name!r}: {len(ids)} label-word tokens follow one prefix; vLLM scores "
                f"at most {MAX_TOKEN_IDS} per request"
            )
        answer = self._completion(
            self.embeds(name, text, prefix),
            **_neutral(
                {
                    "max_tokens": 1,
                    # No seed: the sampled token is never read, and a seeded request
                    # makes vLLM-CPU's worker die when its prefill is chunked (it moves
                    # the per-request generator's offset, which CPU generators lack).
                    "temperature": 1.0,
                    "allowed_token_ids": ids,
                    "logprob_token_ids": ids,
                    "logprobs": len(ids),
                    "return_tokens_as_token_ids": True,
                }
            ),
        )
        top = answer["choices"][0]["logprobs"]["top_logprobs"][0]
        found = {int(key.split(":", 1)[1]): float(value) for key, value in top.items()}
        return {token: found[token] for token in ids}

    def word_scores(self, name: str | VllmTask, text: str) -> list[float]:
        """(W,) log-probability of each label word (in the verbalizer's order)."""
        name = self.get(name)
        verbalizer = name.model.task
        words = [ids for per_class in verbalizer.word_ids for ids in per_class]
        follow = _word_prefixes(words)
        if len(follow) == 1:  # single-token words: one request, on the caller's thread
            logprobs = {(): self._token_logprobs(name, text, [], follow[()])}
        else:  # the engine's own pool: callers never run on it, so waiting here is safe
            jobs = {
                p: self.pool.submit(self._token_logprobs, name, text, list(p), nxt)
                for p, nxt in follow.items()
            }
            logprobs = {p: job.result() for p, job in jobs.items()}
        return [sum(logprobs[tuple(w[:j])][t] for j, t in enumerate(w)) for w in words]

    def classify(self, name: str | VllmTask, text: str) -> dict[str, Any]:
        """{label, scores} as `softprompt predict` gives them, scored by vLLM."""
        task = self.get(name)
        if task.generates:
            raise NotForVllm(f"task {task.name!r} generates text; use generate")
        word_scores = torch.tensor([self.word_scores(task, text)], dtype=torch.float64)
        scores = task.model.task._class_scores(word_scores)  # (1, C) logsumexp per class
        return {"task": task.name, **task.model.task.describe_scores(scores)[0]}

    # -- generation ----------------------------------------------------------------------
    def _generation_body(
        self, name: str | VllmTask, max_tokens: int | None, sampling: dict[str, Any]
    ):
        task = self.get(name)
        if not task.generates:
            raise NotForVllm(f"task {task.name!r} classifies; use classify")
        limit = task.model.task.config.max_new_tokens if max_tokens is None else max_tokens
        body = {"max_tokens": limit, "temperature": 0.0, "return_token_ids": True}
        body.update({k: v for k, v in sampling.items() if v is not None})
        return task, _neutral(body)

    def generate(
        self, name: str | VllmTask, text: str, *, max_tokens: int | None = None, **sampling: Any
    ) -> dict[str, Any]:
        """Text and finish reason; `sampling` (temperature, top_p, top_k, seed, stop...)
        passes through to vLLM. Greedy by default, decoded by the task's own tokenizer
        call so the text equals `softprompt predict`'s."""
        task, body = self._generation_body(name, max_tokens, sampling)
        choice = self._completion(self.embeds(task, text), **body)["choices"][0]
        tokens = choice.get("token_ids")
        # vLLM cuts the text at a stop string (the token ids run on past it)
        plain = tokens is None or bool(body.get("stop"))
        out = choice["text"] if plain else task.model.task.decode(tokens)
        return {
            "task": task.name,
            "text": out,
            "finish_reason": choice.get("finish_reason"),
            "tokens": len(tokens) if tokens is not None else 0,
        }

    def _chunks(self, name: str | VllmTask, text: str, max_tokens: int | None, sampling):
        """(piece, finish reason or None) of a streamed completion, as vLLM sends them."""
        task, body = self._generation_body(name, max_tokens, sampling)
        body.pop("return_token_ids", None)
        request = {
            "model": self.model_id,
            "prompt_embeds": encode_embeds(self.embeds(task, text)),
            **body,
            "stream": True,
        }
        for chunk in self.client.stream("/v1/completions", request):
            if chunk.get("choices"):
                choice = chunk["choices"][0]
                yield choice.get("text") or "", choice.get("finish_reason")

    def stream(
        self, name: str | VllmTask, text: str, *, max_tokens: int | None = None, **sampling: Any
    ) -> Iterator[str]:
        """The generated text piece by piece, as vLLM streams it."""
        for piece, _ in self._chunks(name, text, max_tokens, sampling):
            if piece:
                yield piece

    def generate_streamed(
        self,
        name: str | VllmTask,
        text: str,
        on_token: Callable[[str], None],
        *,
        max_tokens: int | None = None,
        **sampling: Any,
    ) -> dict[str, Any]:
        """`generate`, with each piece passed to `on_token` as vLLM streams it (the
        gateway's streaming responses); the text is the pieces joined."""
        task, pieces, reason = self.get(name), [], None
        for piece, why in self._chunks(task, text, max_tokens, sampling):
            if piece:
                pieces.append(piece)
                on_token(piece)
            reason = why or reason
        out = "".join(pieces)
        with self._embedding:  # the tokenizer is shared by request threads
            count = len(task.model.task.tokenizer(out, add_special_tokens=False)["input_ids"])
        return {"task": task.name, "text": out, "finish_reason": reason, "tokens": count}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


# -- offline batch ------------------------------------------------------------------------


def predict(
    prompt: str | Path, texts: list[str], url: str, *, backbone: str | None = None,
    workers: int = 32,
) -> list[dict[str, Any]]:  # fmt: skip
    """`softprompt predict --engine vllm`: the prompt file's answers for `texts`, computed
    by the vLLM at `url` (serving the backbone's folder), in `PromptModel.predict`'s shape.
    The texts are sent `workers` at a time: vLLM batches concurrent requests itself."""
    name = backbone or load_prompt_meta(prompt)["backbone"]["name"]
    engine = VllmEngine(model_folder(name), url, backbone=load_backbone(name), workers=workers)
    try:
        task = engine.add("predict", prompt)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="predict") as pool:
            if task.generates:
                rows = pool.map(lambda text: {"text": engine.generate(task, text)["text"]}, texts)
            else:
                rows = pool.map(lambda text: engine.classify(task, text), texts)
            return [{k: v for k, v in row.items() if k != "task"} for row in rows]
    finally:
        engine.close()
