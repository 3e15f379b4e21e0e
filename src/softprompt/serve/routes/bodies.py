"""The JSON bodies the endpoints take, and which OpenAI fields are refused.

Native bodies forbid unknown fields (a typo is a 422). OpenAI bodies keep unknown fields
so `refuse_unimplemented` can name one the server does not implement in a 400: a client
that asks for `echo`, `tools` or `response_format` must learn it did not get them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from softprompt.serve.routes.errors import ApiError
from softprompt.serve.routes.state import MAX_INPUTS

MAX_LOGPROBS = 20  # alternatives per token, as OpenAI's top_logprobs
MAX_N = 16  # choices per prompt
# OpenAI fields that change nothing a prompt server answers: accepted and not used
INFORMATIONAL = {"user", "metadata", "store", "service_tier", "safety_identifier"}
# OpenAI fields whose default value asks for nothing: accepted at that value only
DEFAULTS: dict[str, Any] = {
    "echo": False,
    "best_of": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": {},
    "suffix": None,
    "tools": [],
    "functions": [],
    "parallel_tool_calls": None,
}
WHY = {
    "echo": "the prompt is not returned with the completion",
    "tools": "a task answers with its trained prompt and calls no tools",
    "tool_choice": "a task answers with its trained prompt and calls no tools",
    "functions": "a task answers with its trained prompt and calls no functions",
    "function_call": "a task answers with its trained prompt and calls no functions",
    "response_format": "output is not constrained to a format or JSON schema",
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassifyInput(_Body):
    """`text` for a text task, `image` (base64 PNG/JPEG, or a data: URL) for an image task."""

    task: str
    text: str | None = None
    image: str | None = None


class ClassifyBody(_Body):
    inputs: list[ClassifyInput] = Field(min_length=1, max_length=MAX_INPUTS)


class SamplingFields(BaseModel):
    """Generation only; defaults: greedy (temperature 0), no top-k/top-p cut, no stop."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None


class GenerateInput(_Body, SamplingFields):
    task: str
    text: str
    max_tokens: int | None = None


class GenerateBody(_Body):
    inputs: list[GenerateInput] = Field(min_length=1, max_length=MAX_INPUTS)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _OpenAIBody(SamplingFields):
    # other fields are kept to be checked: one the server does not implement is a 400
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1

    def top_k_logprobs(self) -> int | None:
        """How many alternatives to return per token (None: no log-probs asked for)."""
        raise NotImplementedError


class CompletionBody(_OpenAIBody):
    prompt: str | list[str]
    logprobs: int | None = None  # completions: the number of alternatives (0 to 20)

    def top_k_logprobs(self) -> int | None:
        return self.logprobs


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatBody(_OpenAIBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def top_k_logprobs(self) -> int | None:
        if not self.logprobs:
            if self.top_logprobs:
                raise ApiError(400, "top_logprobs: needs logprobs: true")
            return None
        return self.top_logprobs or 0


def refuse_unimplemented(body: _OpenAIBody) -> None:
    """A 400 naming the first field this server would otherwise ignore."""
    for name, value in (body.model_extra or {}).items():
        if name in INFORMATIONAL or value is None:
            continue
        if name in DEFAULTS and value == DEFAULTS[name]:
            continue
        why = WHY.get(name, "this server does not implement it")
        raise ApiError(400, f"{name}: not supported ({why}); leave the field out")
