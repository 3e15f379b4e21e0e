"""Dynamic batching: requests that arrive within a few milliseconds share a forward pass.

Every HTTP request puts its inputs (already checked, each bound to the task version
that answers it) on one queue. A single worker takes the first waiting request, then
keeps taking more until `max_wait_ms` has passed since the first or the batch would pass
`max_batch_tokens` / `max_batch_rows`, and runs them all in one engine call on a worker
thread (the model runs one batch at a time; the event loop stays free). A request's
inputs are never split across batches. If a batch fails, each request in it is rerun
alone, so one request's failure never becomes another's answer.

With continuous batching (the engine's `continuous`, on by default) the model thread
also takes requests from the queue between decoding steps (`take`): they join the
running decode (serve/continuous.py), within the same row and token limits, and each
request is answered as soon as its own inputs are done. While a prompt load or hot swap
waits for the model thread nothing joins, so the decode ends and the swap runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from softprompt.serve.engine import Engine, Request
from softprompt.serve.metrics import Metrics

Answer = list[dict[str, Any]] | BaseException


@dataclass(eq=False)
class Job:
    inputs: list[Request]
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)
    settled: bool = False  # answered from the model thread (continuous batching)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.inputs)

    def settle(self, answer: Answer) -> None:
        """Answer the job from the model thread, as soon as it is done."""
        self.settled = True
        self.future.get_loop().call_soon_threadsafe(_resolve, self.future, answer)


def _resolve(future: asyncio.Future, answer: Answer) -> None:
    if future.done():  # the client went away
        return
    if isinstance(answer, BaseException):
        future.set_exception(answer)
    else:
        future.set_result(answer)


class Batcher:
    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        *,
        max_wait_ms: float = 5.0,
        max_batch_tokens: int = 4096,
        max_batch_rows: int = 64,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_wait = max_wait_ms / 1000
        self.max_tokens = max_batch_tokens
        self.max_rows = max_batch_rows
        self._jobs: deque[Job] = deque()  # waiting; the model thread takes from it too
        self._lock = threading.Lock()
        self._arrived: asyncio.Event | None = None
        self._held: Job | None = None
        self._calls = 0  # loads and swaps waiting for the model thread
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="softprompt-model")

    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        return len(self._jobs) + (self._held is not None)

    @property
    def continuous(self) -> bool:
        """Whether requests join a running decode (the engine's `continuous`)."""
        return bool(getattr(self.engine, "continuous", False)) and hasattr(self.engine, "serve")

    async def submit(self, inputs: list[Request]) -> list[dict[str, Any]]:
        """Queue one request's inputs; their answers, in order. Inputs that all go to an
        engine batching them itself (vLLM, via serve/router.py `direct`) are sent at
        once instead: they never wait behind a batch of the model thread."""
        direct = getattr(self.engine, "direct", None)
        sent = direct(inputs) if direct is not None else None
        if sent is not None:
            return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in sent)))
        job = Job(inputs, asyncio.get_running_loop().create_future())
        with self._lock:
            self._jobs.append(job)
        self._arrived.set()
        return await job.future

    async def call(self, fn, *args):
        """Run `fn` on the model thread, between batches (loading a prompt runs the model).
        While it waits, no request joins a running decode, so the decode ends soon."""
        self._calls += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._calls -= 1

    async def _next(self, timeout: float | None) -> Job | None:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        while True:
            with self._lock:
                if self._jobs:
                    return self._jobs.popleft()
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return None

    async def _gather(self) -> list[Job]:
        first = await self._next(None)
        jobs, tokens, rows = [first], first.tokens, len(first.inputs)
        deadline = time.perf_counter() + self.max_wait
        while rows < self.max_rows and tokens < self.max_tokens:
            left = deadline - time.perf_counter()
            job = await self._next(left) if left > 0 else None
            if job is None:
                break
            if tokens + job.tokens > self.max_tokens or rows + len(job.inputs) > self.max_rows:
                self._held = job  # first in the next batch
                break
            jobs.append(job)
            tokens, rows = tokens + job.tokens, rows + len(job.inputs)
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            jobs = [j for j in jobs if not j.future.done()]  # client went away
            if not jobs:
                continue
            started = time.perf_counter()
            for job in jobs:
                self.metrics.observe("softprompt_queue_wait_seconds", started - job.arrived)
            inputs = [r for job in jobs for r in job.inputs]
            self.metrics.observe("softprompt_batch_rows", len(inputs))
            self.metrics.observe("softprompt_batch_tasks", len({r.served.task for r in inputs}))
            if self.continuous and all(_own(job) for job in jobs):
                await loop.run_in_executor(self._pool, self._serve, jobs)
                continue
            answers = await loop.run_in_executor(self._pool, self._run, jobs)
            for job, answer in zip(jobs, answers, strict=True):
                _resolve(job.future, answer)

    def _run(self, jobs: list[Job]) -> list[list[dict[str, Any]] | BaseException]:
        """All jobs in one engine call; on failure each job alone (its own error back)."""
        try:
            flat = self.engine.run([r for job in jobs for r in job.inputs])
        except Exception as exc:  # noqa: BLE001 - isolate below
            if len(jobs) == 1:
                return [exc]
            return [self._alone(job) for job in jobs]
        out, start = [], 0
        for job in jobs:
            out.append(flat[start : start + len(job.inputs)])
            start += len(job.inputs)
        return out

    def _alone(self, job: Job) -> list[dict[str, Any]] | BaseException:
        try:
            return self.engine.run(job.inputs)
        except Exception as exc:  # noqa: BLE001
            return exc

    def _serve(self, jobs: list[Job]) -> None:
        """Continuous batching (serve/continuous.py): the jobs, and those that join the
        decode, each answered as soon as it is done. On failure every job not answered
        yet is rerun alone (its own error back)."""
        taken = list(jobs)
        try:
            self.engine.serve(jobs, _Arrivals(self, taken))
        except Exception as exc:  # noqa: BLE001 - isolate below
            left = [job for job in taken if not job.settled]
            for job in left:
                job.settle(exc if len(taken) == 1 else self._alone(job))

    def take(self, rows: int) -> list[Job]:
        """Jobs waiting now that fit beside `rows` decoding rows (the batch limits),
        oldest first; none while a load or swap waits for the model thread. Runs on the
        model thread, between decoding steps."""
        taken: list[Job] = []
        tokens = 0
        with self._lock:
            while not self._calls:
                job = (
                    self._held
                    if self._held is not None
                    else (self._jobs[0] if self._jobs else None)
                )
                if job is None or not _own(job):
                    break
                if not job.future.done():  # else the client went away
                    if (
                        rows + len(job.inputs) > self.max_rows
                        or tokens + job.tokens > self.max_tokens
                    ):
                        break
                    taken.append(job)
                    rows, tokens = rows + len(job.inputs), tokens + job.tokens
                if job is self._held:
                    self._held = None
                else:
                    self._jobs.popleft()
        now = time.perf_counter()
        for job in taken:
            self.metrics.observe("softprompt_queue_wait_seconds", now - job.arrived)
        return taken


class _Arrivals:
    """The batcher's queue as a running decode sees it; remembers what it handed out."""

    def __init__(self, batcher: Batcher, taken: list[Job]) -> None:
        self.batcher, self.taken = batcher, taken

    def take(self, rows: int) -> list[Job]:
        jobs = self.batcher.take(rows)
        self.taken += jobs
        return jobs


def _own(job: Job) -> bool:
    """Whether every input is the own engine's (a router sends vLLM's elsewhere)."""
    return all(r.served.engine == "own" for r in job.inputs)
