"""Mixed-task batches on one frozen backbone, each task's prompt K/V from the cache.

Each task's prompt K/V come from a cache (inject/cached.py: `CachedInjector`), so a
row's answer equals the same row run alone through its task; encoders have no
input-independent prefix and run their prompts as usual. Generation rows decode
together (serve/decoding.py), each with its own sampling and stop sequences.

`Engine` owns the served tasks (loaded from a `PromptStore`, checked against the
backbone's fingerprint), hot-swaps them, and answers a list of requests in one
classification pass plus one decoding loop, which requests arriving meanwhile join
(continuous batching: serve/continuous.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from softprompt.backbones import Backbone
from softprompt.data import Example
from softprompt.errors import PromptFileError, SoftPromptError
from softprompt.inject import CausalInjector, Prompt, RowPrompts
from softprompt.inject.cached import CachedInjector, CachedPrompt
from softprompt.inject.packing import pack_rows, packed_hidden, worth_packing
from softprompt.inject.prompt_cache import PromptKVCache
from softprompt.model import MixedBatch, MultiTaskModel, PromptModel
from softprompt.promptfile import check_backbone
from softprompt.serve.continuous import Answered, Arrivals, Group, Session
from softprompt.serve.decoding import Packing
from softprompt.serve.limits import shorten
from softprompt.serve.requests import (  # re-exported: routes and tests import them here
    BadInput,
    RefusedTask,
    Request,
    RequestDoor,
    Served,
    UnknownTask,
    check_unicode,
    check_version,
    task_and_version,
)
from softprompt.serve.sampling import Sampling
from softprompt.serve.store import (
    Entry,
    PromptStore,
    _check_prompt_bytes,
    check_task_name,
)
from softprompt.tasks.classification import VerbalizerTask
from softprompt.tasks.generation import GenerationTask


class _Batch(MultiTaskModel):
    """The batch's tasks, run through the caching injector with the cached prompts."""

    def __init__(self, served: dict[str, Served], injector) -> None:
        super().__init__({ref: s.model for ref, s in served.items()})
        object.__setattr__(self, "injector", injector)
        object.__setattr__(self, "_served", served)

    def row_prompts(self, batch: MixedBatch) -> RowPrompts:
        prompts = [self._served[ref].prompt for ref, _ in batch.parts]
        choice = [i for i, (_, part) in enumerate(batch.parts) for _ in part["input_ids"]]
        return RowPrompts.per_row(prompts, choice, self.device)


class Engine(RequestDoor):
    """The served tasks of one backbone, and the code that answers mixed batches."""

    def __init__(
        self,
        backbone: Backbone,
        store: PromptStore,
        *,
        cache_bytes: int = 64 << 20,
        max_input_tokens: int = 512,
        pass_tokens: int | None = 32,
        pack_tokens: int | None = 128,
        pack_weights: bool = True,
        continuous: bool = True,
    ) -> None:
        self.backbone = backbone
        self.store = store
        self.cache = PromptKVCache(cache_bytes)
        self.max_input_tokens = max_input_tokens
        self.pass_tokens = pass_tokens
        self.pack_tokens = pack_tokens  # packed row width (inject/packing.py); None: pad
        self.pack_weights = pack_weights  # oneDNN-packed frozen weights (inject/fast_linear.py)
        self.continuous = continuous  # requests join a running decode (serve/continuous.py)
        self.tasks: dict[str, Served] = {}
        self.refused: dict[str, str] = {}  # task -> why its stored prompt is not served
        self._lock = threading.RLock()
        self._injector = None

    # -- tasks ---------------------------------------------------------------
    def load_all(self) -> None:
        """Serve every task's newest stored version that fits this backbone; the others
        are listed in `refused` with why (a bad entry never stops the server)."""
        for task in self.store.tasks():
            try:
                self.load(task)
            except SoftPromptError as exc:
                self.refused[task] = str(exc)

    def load(self, ref: str) -> Served:
        entry = self.store.resolve(ref)
        return self._serve(entry, self._build(self.store.path(entry), f"task {entry.task!r}"))

    def _build(self, path, what: str) -> PromptModel:
        """The prompt file as a model on this backbone, or a SoftPromptError saying why not."""
        try:
            model = PromptModel.load(path, self.backbone)
        except PromptFileError as exc:
            raise RefusedTask(f"{what}: {exc}") from None
        except SoftPromptError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadInput(
                f"{what}: a prompt file softprompt cannot rebuild (metadata {type(exc).__name__}: "
                f"{exc}); save it again with this version of softprompt"
            ) from None
        if model.backbone.spec.kind == "seq2seq-lm":
            raise RefusedTask(
                f"{what}: {model.backbone.name} is an encoder-decoder; the server batches "
                "decoder-only and encoder prompts only, so answer it with `softprompt predict`"
            )
        return model.eval()

    def _serve(self, entry: Entry, model: PromptModel) -> Served:
        labels = [] if model.task.generates else list(model.task.config.labels)
        served = Served(entry, model, labels=labels)
        if isinstance(model.injector, CausalInjector):
            if self._injector is None:
                self._injector = CachedInjector(
                    model.injector, self.cache, pack_weights=self.pack_weights
                )
            key = (entry.task, entry.version, entry.sha256)
            head = _head_into_prefix(model)
            served.prompt = CachedPrompt(key=key, source=_prompt_of(model, head))
            self.cache.retire(entry.task, key)
        with self._lock:
            self.tasks[entry.task] = served
            self.refused.pop(entry.task, None)
        return served

    def install(self, task: str, data: bytes) -> Served:
        """Hot-load an uploaded prompt file as the task's next version. It is checked
        (readable, this backbone, rebuildable) before the store or the server sees it."""
        model = self.check_upload(task, data)
        return self._serve(self.store.add(task, data), model)

    def check_upload(self, task: str, data: bytes) -> PromptModel:
        """The uploaded prompt file rebuilt on this backbone, or a SoftPromptError saying
        why not. Built in the store's scratch folder: what a killed server leaves there
        is the store's own to sweep, never a stray folder in /tmp."""
        check_task_name(task)
        meta = _check_prompt_bytes(data, f"upload for task {task!r}")
        try:
            check_backbone("upload", meta, self.backbone.name, self.backbone.fingerprint)
        except PromptFileError as exc:
            raise RefusedTask(str(exc)) from None
        with self.store.scratch() as folder:
            path = Path(folder) / "upload.safetensors"
            path.write_bytes(data)
            return self._build(path, f"upload for task {task!r}")

    def remove(self, ref: str) -> list[Entry]:
        """Remove `task@v` (or every version of `task`) from the store and from serving:
        the task then serves its newest remaining version, or nothing. A removed version
        is never answered again (requests already bound to it finish with it, and say so)."""
        gone = self.store.remove(ref)
        self._follow_store(gone[0].task)
        return gone

    def _follow_store(self, task: str) -> None:
        """Serve what the store now holds as the task's newest version (or stop serving)."""
        newest = self.store.tasks().get(task)
        with self._lock:
            served = self.tasks.get(task)
        if newest is None:
            self.drop(task)
            return
        if served is not None and served.entry == newest:
            return  # an older version went; what is served stays
        try:
            self.load(task)  # swaps in at once: `task` never answers 404 in between
        except SoftPromptError as exc:  # the version left cannot be served: nothing is
            self.drop(task)
            with self._lock:
                self.refused[task] = str(exc)

    def drop(self, task: str) -> None:
        """Stop serving `task` here (its cached prompt K/V go too); the store is untouched.
        The router calls it when a task's new version moves to the other engine."""
        with self._lock:
            self.tasks.pop(task, None)
            self.refused.pop(task, None)
        self.cache.retire(task, None)

    def get(self, ref: Any) -> Served:
        """The served task `ref` names: `task` (its served version) or `task@v`, which
        answers only while v is the version served (a pinned client is never answered by
        another version)."""
        task, version = task_and_version(ref)
        with self._lock:
            served = self.tasks.get(task)
            refused = self.refused.get(task)
            names = sorted(self.tasks)
        if served is not None:
            return check_version(served, task, version)
        if refused is not None:
            raise RefusedTask(refused)
        shown = names if len(names) <= 20 else [*names[:20], f"... {len(names)} in all"]
        raise UnknownTask(f"unknown task {shorten(ref)}; served tasks: {shown} (GET /tasks)")

    # -- requests (`request`: RequestDoor) -------------------------------------------
    def check(
        self,
        served: Served,
        task: Any,
        text: Any,
        generate: bool | None,
        max_tokens: int | None = None,
        on_token: Callable[[str], None] | None = None,
        sampling: Sampling | None = None,
        image: Any = None,
    ) -> Request:
        """`request` for a task already looked up (the router's tasks of either engine)."""
        if served.takes_images or image is not None:
            return self._image_request(served, text, image)
        if not isinstance(text, str) or not text.strip():
            raise BadInput(f"task {shorten(task)}: the text must be a non-empty string")
        check_unicode(text, "text")
        if generate is not None and generate != served.generates:
            want = "/generate" if served.generates else "/classify"
            raise BadInput(
                f"task {shorten(task)} is a {served.describe()['kind']} task; send it to {want}"
            )
        if len(text) > 32 * self.max_input_tokens:
            raise BadInput(
                f"input too long: {len(text)} characters (limit {self.max_input_tokens} tokens)"
            )
        count = len(self.backbone.tokenizer(text, add_special_tokens=False)["input_ids"])
        if count > self.max_input_tokens:
            raise BadInput(
                f"input too long: {count} tokens, the server takes at most "
                f"{self.max_input_tokens} (--max-input-tokens)"
            )
        if served.generates:
            limit = served.model.task.config.max_new_tokens if max_tokens is None else max_tokens
            if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1024:
                raise BadInput(f"max_tokens must be an integer from 1 to 1024, got {max_tokens!r}")
            max_tokens = limit
        context = served.model.task.contexts([Example(text, "")])[0]
        return Request(served, text, len(context), max_tokens, on_token, sampling or Sampling())

    def _image_request(self, served: Served, text: Any, image: Any) -> Request:
        task = served.task
        if not served.takes_images:
            raise BadInput(f"task {task!r} takes text, not an image; send {{'text': ...}}")
        if image is None or text is not None:
            raise BadInput(
                f"task {task!r} is an image task; send {{'image': base64 PNG/JPEG}} to /classify"
            )
        size, patch = served.model.task.size, served.model.task.preprocess.patch_size
        return Request(served, "", (size // patch) ** 2 + 1, image=image)  # tokens: patches

    def run(self, requests: list[Request]) -> list[dict[str, Any]]:
        """Answer requests of any tasks: one forward pass for every classification row,
        one decoding loop for every generation row."""
        group = Answered(requests)
        self.serve([group])
        return group.answers

    @torch.no_grad()
    def serve(self, groups: list[Group], arrivals: Arrivals | None = None) -> None:
        """Answer groups of requests (serve/continuous.py), each settled as soon as its
        last input is done. With `arrivals` and `continuous` on, groups that arrive
        while the decode runs join it at its next step."""
        session = Session(self, arrivals if self.continuous else None)
        if self._injector is None:
            session.run(groups)
            return
        self._injector.in_use = {}
        try:
            with self._injector.packed_weights():
                session.run(groups)
        finally:
            self._injector.in_use = None

    def _batch(self, requests: list[Request]) -> _Batch:
        served = {r.served.entry.ref: r.served for r in requests}
        if self._injector is None:  # encoder: plain prompts, computed per batch
            for s in served.values():
                s.prompt = s.prompt or s.model.prompt()
            return _Batch(served, next(iter(served.values())).model.injector)
        return _Batch(served, self._injector)

    def _classify(self, requests: list[Request]) -> list[dict[str, Any]]:
        """Rows of every task together, cut into passes of similar length where the padding
        saved outweighs another pass (`length_groups`); images one pass per task."""
        results: list[dict[str, Any]] = [{}] * len(requests)
        images: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            if r.image is not None:
                images.setdefault(r.served.entry.ref, []).append(i)
        for rows in images.values():
            answers = self._classify_images([requests[i] for i in rows])
            for i, answer in zip(rows, answers, strict=True):
                results[i] = answer
        packed = [i for i, r in enumerate(requests) if r.image is None and self._packable(r)]
        answers = self._classify_packed([requests[i] for i in packed]) if packed else None
        if answers is None:  # nothing packable, or packing declined: padded passes
            packed, answers = [], []
        for i, answer in zip(packed, answers, strict=True):
            results[i] = answer
        done = set(packed)
        texts = [i for i, r in enumerate(requests) if r.image is None and i not in done]
        for group in (
            []
            if not texts
            else length_groups([requests[i].tokens for i in texts], self.pass_tokens)
        ):
            group = [texts[i] for i in group]
            answers = self._classify_pass([requests[i] for i in group])
            for i, answer in zip(group, answers, strict=True):
                results[i] = answer
        return results

    def _packable(self, request: Request) -> bool:
        """Rows scored by one label-word token at the end of the row, on a decoder."""
        task = request.served.model.task
        return (
            self.pack_tokens is not None
            and self._injector is not None
            and isinstance(task, VerbalizerTask)
            and task.single_token
            and not task.template.has_slots
        )

    def _classify_packed(self, requests: list[Request]) -> list[dict[str, Any]] | None:
        """Every row in one pass without padding (inject/packing.py); each task scores its
        rows' answer states with its own label words. None when packing would cost more
        than padded passes (`worth_packing`: long prompts of many tasks)."""
        refs = list(dict.fromkeys(r.served.entry.ref for r in requests))
        served = {r.served.entry.ref: r.served for r in requests}
        contexts = [r.served.model.task.contexts([Example(r.text, "")])[0] for r in requests]
        choice = [refs.index(r.served.entry.ref) for r in requests]
        cached = [self._injector.prompt_kv(served[ref].prompt) for ref in refs]  # (kv, width)
        widths = [width for _, width in cached]
        bins = pack_rows([len(c) for c in contexts], self.pack_tokens, choice, widths)
        if not worth_packing(bins, choice, widths, self.pack_tokens):
            return None
        hidden, segments = packed_hidden(
            self._injector, cached, bins, choice, contexts, pad_id=self.backbone.spec.pad_token_id
        )  # (R, C, d)
        rows = torch.tensor([s.row for s in segments], device=hidden.device)
        ends = torch.tensor([s.start + s.length - 1 for s in segments], device=hidden.device)
        answers = hidden[rows, ends]  # (B, d): each request's last token
        results: list[dict[str, Any]] = [{}] * len(requests)
        for ref in refs:
            mine = [i for i, r in enumerate(requests) if r.served.entry.ref == ref]
            task = served[ref].model.task
            at = torch.zeros(len(mine), dtype=torch.long, device=hidden.device)
            scores = task.score(self._injector, answers[mine].unsqueeze(1), {"answer_index": at})
            for i, record in zip(mine, task.describe_scores(scores.scores), strict=True):
                results[i] = record
        return results

    def _classify_images(self, requests: list[Request]) -> list[dict[str, Any]]:
        """Images of one task in one pass (a ViT batch takes one visual prompt)."""
        model = requests[0].served.model
        pixels = model.task.preprocess([r.image for r in requests], model.task.size)
        output = model.task.forward(model.injector, model.prompt(), {"pixel_values": pixels})
        return model.task.describe(output, None)

    def _classify_pass(self, requests: list[Request]) -> list[dict[str, Any]]:
        model = self._batch(requests)
        items = [(r.served.entry.ref, Example(r.text, "")) for r in requests]
        batch = model.collate(items)
        output = model(batch)
        answers: dict[str, list[dict[str, Any]]] = {}
        for ref, _ in batch.parts:
            task = model.models[ref].task
            answers[ref] = task.describe_scores(output.outputs[ref].scores)
        taken = {ref: iter(rows) for ref, rows in answers.items()}
        return [next(taken[r.served.entry.ref]) for r in requests]

    def _generation_inputs(self, requests: list[Request]) -> tuple[Any, RowPrompts, Packing | None]:
        """What decoding `requests` needs: the injector, each row's prompt, and each
        distinct prompt's cached K/V for a packed prefill (None: pad)."""
        model = self._batch(requests)
        refs = list(model.models)
        prompts = RowPrompts.per_row(
            [model._served[ref].prompt for ref in refs],
            [refs.index(r.served.entry.ref) for r in requests],
            model.device,
        )
        packed = None
        if self._injector is not None and self.pack_tokens is not None:
            cached = [self._injector.prompt_kv(model._served[ref].prompt) for ref in refs]
            packed = Packing(cached, prompts.index.tolist(), self.pack_tokens)
        return model.injector, prompts, packed


def length_groups(lengths: list[int], pass_tokens: int | None) -> list[list[int]]:
    """Row indices in passes that cost least: rows sorted by length, cut where padding
    every row of a pass to its longest costs more than starting another pass.

    A pass is charged its padded tokens plus `pass_tokens`: on a CPU every pass streams
    all the weights once, which measured on SmolLM2 costs about what 30 tokens of
    compute do (benchmarks/serve_throughput.py). Exact minimum over contiguous cuts of
    the sorted rows (O(n^2), n <= a batch). None: one pass."""
    if pass_tokens is None or len(lengths) <= 1:
        return [list(range(len(lengths)))]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    sizes = [lengths[i] for i in order]
    best = [0.0] + [float("inf")] * len(sizes)  # best[j]: cost of the first j rows
    cut = [0] * (len(sizes) + 1)
    for j in range(1, len(sizes) + 1):
        for i in range(j):  # rows i..j-1 in one pass, padded to sizes[j-1]
            cost = best[i] + sizes[j - 1] * (j - i) + pass_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(sizes)
    while j:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def _head_into_prefix(model: PromptModel) -> list[int]:
    """The template's text before {text} as token ids for the cached prefix, or [].

    On a decoder that text never sees the input, so its K/V belong with the prompt's:
    computed once per task, not once per request row (performance.md #1). The task then
    leaves it out of each row (`head_in_front`, as templates with slots already do).
    Only for tasks whose answer is read at positions relative to the row's end (label
    words, generation): a mean over the row's states would change."""
    task = model.task
    if not isinstance(task, VerbalizerTask | GenerationTask) or task.template.has_slots:
        return []
    head, _ = task.template.head_and_glue()
    ids, _ = task.template.encode_pieces(task.tokenizer, head)
    if ids:
        task.head_in_front = True
    return ids


def _prompt_of(model: PromptModel, head: list[int]) -> Callable[[], Prompt]:
    """The task's prompt, with the template head's embeddings after its virtual tokens."""

    def compute() -> Prompt:
        with torch.no_grad():
            prompt = model.prompt()
            if not head:
                return prompt
            ids = torch.tensor(head, device=model.device)
            embeds = model.injector.embed(ids)  # (h, d)
            if prompt.embeds is not None:
                embeds = torch.cat([prompt.embeds, embeds.to(prompt.embeds.dtype)])  # (n + h, d)
            return Prompt(embeds=embeds, kv=prompt.kv, inline=prompt.inline)

    return compute
