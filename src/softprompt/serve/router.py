"""One server, two engines: input-level prompts answered by vLLM, K/V prefixes by our own.

A soft prompt, an exported P-tuning prompt or an MPT prompt lives in the input
embeddings, so vLLM can run it (serve/vllm.py); prefix tuning and deep prompts put
keys/values in every layer, which vLLM cannot take, and trained heads are not label
words: those tasks stay on softprompt's own `Engine`. Where a task goes is decided by
its method when it is loaded, shown as `"engine"` in /tasks, and never changes at run
time: a task placed on vLLM answers 503 while vLLM is down, it is never quietly answered
by the other engine.

`Router` has the interface the batcher and the HTTP app use on `Engine` (`get`,
`request`, `run`, `tasks`, `refused`, `install`, `remove`, `backbone`, `cache`). A
request is bound at arrival to the `Served` version it names, on either engine, so a hot
swap never changes the answer of a request in flight. In `run`, own-engine rows go
through one mixed batch on the calling thread while vLLM rows are sent concurrently
(vLLM batches them itself).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from softprompt.errors import SoftPromptError
from softprompt.inject.prompt_cache import PromptKVCache
from softprompt.model import PromptModel
from softprompt.serve.continuous import Arrivals, Group
from softprompt.serve.engine import Engine, RefusedTask, Request, Served
from softprompt.serve.requests import RequestDoor, check_version, task_and_version
from softprompt.serve.store import Entry, PromptStore
from softprompt.serve.vllm import VllmEngine, VllmTask, takes, vllm_sampling


class Router(RequestDoor):
    """The served tasks of one backbone, each answered by the engine its method needs."""

    def __init__(self, own: Engine, vllm: VllmEngine, *, workers: int = 64) -> None:
        if vllm.backbone.fingerprint != own.backbone.fingerprint:
            raise RefusedTask(
                f"vLLM serves {vllm.folder} ({vllm.backbone.fingerprint[:12]}), not the "
                f"backbone {own.backbone.name} ({own.backbone.fingerprint[:12]}) the prompts "
                "are checked against; start vLLM on that backbone's folder"
            )
        self.own = own
        self.vllm = vllm
        self.store: PromptStore = own.store
        self.on_vllm: dict[str, Served] = {}
        self.refused: dict[str, str] = {}  # task -> why no engine serves it
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vllm-request")

    @property
    def backbone(self):
        return self.own.backbone

    @property
    def cache(self) -> PromptKVCache:
        return self.own.cache

    @property
    def tasks(self) -> dict[str, Served]:
        """Every served task, on either engine (a snapshot)."""
        with self._lock:
            return {**self.own.tasks, **self.on_vllm}

    # -- tasks ---------------------------------------------------------------------------
    def load_all(self) -> None:
        """Serve every task's newest stored version on its engine; the others are listed
        in `refused` with why."""
        for task in self.store.tasks():
            try:
                self.load(task)
            except SoftPromptError as exc:
                self._refuse(task, str(exc))

    def load(self, ref: str) -> Served:
        entry = self.store.resolve(ref)
        model = self.own._build(self.store.path(entry), f"task {entry.task!r}")
        return self._place(entry, model)

    def _place(self, entry: Entry, model: PromptModel) -> Served:
        """Serve `model` as `entry` on the engine its prompt needs, taking the task off the
        other engine (a new version may be another method)."""
        task = entry.task
        if takes(model):
            loaded = self.vllm.adopt(task, model, entry)
            served = Served(entry, model, loaded.prompt, loaded.labels, engine="vllm")
            with self._lock:
                self.on_vllm[task] = served
                self.refused.pop(task, None)
            self.own.drop(task)
            return served
        served = self.own._serve(entry, model)
        with self._lock:
            self.on_vllm.pop(task, None)
            self.vllm.tasks.pop(task, None)
            self.refused.pop(task, None)
        return served

    def _refuse(self, task: str, why: str) -> None:
        self._drop(task)
        with self._lock:
            self.refused[task] = why

    def _drop(self, task: str) -> None:
        self.own.drop(task)
        with self._lock:
            self.on_vllm.pop(task, None)
            self.vllm.tasks.pop(task, None)
            self.refused.pop(task, None)

    def install(self, task: str, data: bytes) -> Served:
        """Hot-load an upload as the task's next version (checked as `Engine.install`
        checks it), on the engine its method needs."""
        model = self.own.check_upload(task, data)
        return self._place(self.store.add(task, data), model)

    def remove(self, ref: str) -> list[Entry]:
        """Remove `task@v` (or every version) from the store; the task then serves its
        newest remaining version (possibly on the other engine), or nothing."""
        gone = self.store.remove(ref)
        task = gone[0].task
        newest = self.store.tasks().get(task)
        current = self.tasks.get(task)
        if newest is None:
            self._drop(task)
        elif current is None or current.entry != newest:
            try:
                self.load(task)  # swaps in at once: no 404 in between
            except SoftPromptError as exc:
                self._refuse(task, str(exc))
        return gone

    def get(self, ref: Any) -> Served:
        """The served task `ref` names (`task` or `task@v`, pinned as `Engine.get` pins)."""
        task, version = task_and_version(ref)
        with self._lock:
            served = self.on_vllm.get(task)
            refused = self.refused.get(task)
        if served is None and refused is not None:
            raise RefusedTask(refused)
        if served is None:
            return self.own.get(ref)
        return check_version(served, task, version)

    # -- requests (`request`: RequestDoor) ---------------------------------------------------
    def check(self, served: Served, *inputs: Any) -> Request:
        """`Engine.check`: an input is checked the same whichever engine answers it."""
        return self.own.check(served, *inputs)

    def run(self, requests: list[Request]) -> list[dict[str, Any]]:
        """Answer requests of any tasks: vLLM rows sent concurrently while own-engine rows
        run as one mixed batch here. The first error (e.g. `VllmUnavailable`) is raised
        after every row has finished, so the batcher can retry each request alone."""
        jobs: dict[int, Future] = {
            i: self._pool.submit(self._answer, r)
            for i, r in enumerate(requests)
            if r.served.engine == "vllm"
        }
        mine = [i for i, r in enumerate(requests) if i not in jobs]
        results: list[dict[str, Any] | None] = [None] * len(requests)
        failure: BaseException | None = None
        try:
            own = self.own.run([requests[i] for i in mine]) if mine else []
            for i, record in zip(mine, own, strict=True):
                results[i] = record
        except Exception as exc:  # noqa: BLE001 - the vLLM rows finish first
            failure = exc
        for i, job in jobs.items():
            try:
                results[i] = job.result()
            except Exception as exc:  # noqa: BLE001
                failure = failure or exc
        if failure is not None:
            raise failure
        return results

    @property
    def continuous(self) -> bool:
        return self.own.continuous

    def serve(self, groups: list[Group], arrivals: Arrivals | None = None) -> None:
        """Continuous batching on the own engine (the batcher sends only groups whose
        inputs are all the own engine's here; vLLM batches its own)."""
        self.own.serve(groups, arrivals)

    def direct(self, requests: list[Request]) -> list[Future] | None:
        """The answers of a request whose inputs all go to vLLM, sent now on this
        router's threads (vLLM batches concurrent requests itself, so they need not wait
        for the batcher's model thread); None when any input is the own engine's."""
        if not requests or any(r.served.engine != "vllm" for r in requests):
            return None
        return [self._pool.submit(self._answer, r) for r in requests]

    def _answer(self, request: Request) -> dict[str, Any]:
        """One vLLM row, on the version it was bound to."""
        served = request.served
        task = VllmTask(served.task, served.model, served.prompt, served.labels, served.entry)
        if not served.generates:
            record = self.vllm.classify(task, request.text)
        else:
            knobs = vllm_sampling(request.sampling)
            if request.on_token is not None:
                record = self.vllm.generate_streamed(
                    task, request.text, request.on_token, max_tokens=request.max_tokens, **knobs
                )
            else:
                record = self.vllm.generate(
                    task, request.text, max_tokens=request.max_tokens, **knobs
                )
        return dict(record, task=served.task, version=served.entry.version)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.vllm.close()
