"""Dynamic batching: requests that arrive within a few milliseconds share a forward pass.

Every HTTP request puts its inputs (already checked, each bound to the task version
that answers it) on one queue. A single worker takes the first waiting request, then
keeps taking more until `max_wait_ms` has passed since the first or the batch would pass
`max_batch_tokens` / `max_batch_rows`, and runs them all in one engine call on a worker
thread (the model runs one batch at a time; the event loop stays free). A request's
inputs are never split across batches. If a batch fails, each request in it is rerun
alone, so one request's failure never becomes another's answer.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from softprompt.serve.engine import Engine, Request
from softprompt.serve.metrics import Metrics


@dataclass(eq=False)
class Job:
    inputs: list[Request]
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.inputs)


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
        self._queue: asyncio.Queue[Job] | None = None
        self._held: Job | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="softprompt-model")

    def start(self) -> None:
        self._queue = asyncio.Queue()
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
        return (self._queue.qsize() if self._queue else 0) + (self._held is not None)

    async def submit(self, inputs: list[Request]) -> list[dict[str, Any]]:
        """Queue one request's inputs; their answers, in order. Inputs that all go to an
        engine batching them itself (vLLM, via serve/router.py `direct`) are sent at
        once instead: they never wait behind a batch of the model thread."""
        direct = getattr(self.engine, "direct", None)
        sent = direct(inputs) if direct is not None else None
        if sent is not None:
            return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in sent)))
        job = Job(inputs, asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return await job.future

    async def call(self, fn, *args):
        """Run `fn` on the model thread, between batches (loading a prompt runs the model)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _next(self, timeout: float | None) -> Job | None:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        if timeout is None:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
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
            answers = await loop.run_in_executor(self._pool, self._run, jobs)
            for job, answer in zip(jobs, answers, strict=True):
                if job.future.done():
                    continue
                if isinstance(answer, BaseException):
                    job.future.set_exception(answer)
                else:
                    job.future.set_result(answer)

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
