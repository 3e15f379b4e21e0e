"""What the engine answers: one input bound to the task version that answers it
(`Request`), the served task (`Served`), and the errors an input can get.

Split from serve/engine.py so the records and error types that routes, the router and
the batcher share do not sit inside the engine's batching code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from softprompt.errors import SoftPromptError
from softprompt.inject import Prompt
from softprompt.model import PromptModel
from softprompt.serve.limits import shorten
from softprompt.serve.sampling import Sampling
from softprompt.serve.store import Entry
from softprompt.tasks.image import ImageTask


class UnknownTask(SoftPromptError):
    """A request names a task the server does not serve."""


class RefusedTask(SoftPromptError):
    """A stored prompt was made for another backbone (or is unreadable): never served."""


class BadInput(SoftPromptError):
    """An input the server will not run (too long, wrong kind for the endpoint...)."""


def check_unicode(text: str, field: str) -> str:
    """`text` unless it holds a lone surrogate (valid JSON, not encodable as UTF-8: the
    tokenizer would fail on it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadInput(
            f"{field}: not valid Unicode (a lone surrogate {text[exc.start]!r} at character "
            f"{exc.start}); send UTF-8 text"
        ) from None
    return text


@dataclass(eq=False)
class Served:
    """One task as served: its store entry, model and (on decoders) cached prompt."""

    entry: Entry
    model: PromptModel
    prompt: Prompt | None = None
    labels: list[str] = field(default_factory=list)
    engine: str = "own"  # which engine answers it: "own" or "vllm" (serve/router.py)

    @property
    def task(self) -> str:
        return self.entry.task

    @property
    def generates(self) -> bool:
        return bool(self.model.task.generates)

    @property
    def takes_images(self) -> bool:
        return isinstance(self.model.task, ImageTask)

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "version": self.entry.version,
            "ref": self.entry.ref,
            "kind": "generation" if self.generates else "classification",
            "input": "image" if self.takes_images else "text",
            "method": self.entry.method,
            "labels": self.labels,
            "sha256": self.entry.sha256,
            "engine": self.engine,
        }


@dataclass(eq=False)
class Request:
    """One input of one request, bound at arrival to the task version that answers it."""

    served: Served
    text: str
    tokens: int  # filled-template length: batch budgets and length groups
    max_tokens: int | None = None  # generation only
    on_token: Callable[[str], None] | None = None  # streaming: called with each new piece
    sampling: Sampling = field(default_factory=Sampling)  # generation only
    image: Any = None  # image tasks: a decoded PIL image (serve/images.py)


def task_and_version(ref: Any) -> tuple[str, str | None]:
    """`task` or `task@v` -> (task, "v" or None): one reading of a task reference for
    every engine, so a pinned client means the same thing whichever engine answers it."""
    if not isinstance(ref, str):
        raise UnknownTask(f"task must be a string, got {shorten(ref)}")
    task, pinned, version = ref.partition("@")
    return task, version if pinned else None


def check_version(served: Served, task: str, version: str | None) -> Served:
    """`served` unless the reference pins another version than the one served: a pinned
    client is never answered by another version, on either engine."""
    if version is not None and version != str(served.entry.version):
        raise UnknownTask(
            f"task {shorten(task)} has no version {shorten(version)} served: it serves "
            f"version {served.entry.version} ({served.entry.ref}; GET /tasks)"
        )
    return served


class RequestDoor:
    """`request` as the batcher and the HTTP app call it on an `Engine` or a `Router`: the
    object's own `get` binds the input to the task version it names, then `check` checks
    it (the engine's checks on either engine). One signature for both doors, so they
    cannot drift apart."""

    get: Callable[[Any], Served]  # the served task a reference names
    check: Callable[..., Request]  # (served, task, text, generate, max_tokens, on_token, ...)

    def request(
        self,
        task: Any,
        text: Any,
        *,
        generate: bool | None,
        max_tokens: int | None = None,
        on_token: Callable[[str], None] | None = None,
        sampling: Sampling | None = None,
        image: Any = None,
    ) -> Request:
        """One checked input, bound to the version of the task it names (errors name the
        input and the fix)."""
        served = self.get(task)
        return self.check(served, task, text, generate, max_tokens, on_token, sampling, image)
