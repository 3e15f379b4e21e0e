"""What every route shares: the engine, the batcher, the metrics and the limits.

One `ServeState` per app, kept on `app.state.serve`; a route takes it as a dependency
(`State`), so routes live in their own modules instead of closures inside `create_app`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from softprompt.serve.batcher import Batcher
from softprompt.serve.engine import Engine
from softprompt.serve.engine import Request as Input
from softprompt.serve.metrics import Metrics
from softprompt.serve.routes.errors import ApiError
from softprompt.serve.sampling import Sampling, check_sampling

MAX_INPUTS = 256  # inputs per request
MAX_NEW_TOKENS = 1024  # as engine.request checks


@dataclass
class ServeState:
    """The app's engine and batcher, and the bounds every request is checked against."""

    engine: Engine
    batcher: Batcher
    metrics: Metrics
    admin_token: str | None
    request_limit: int  # tokens per request (inputs x template, plus max_tokens)
    max_upload_bytes: int
    max_image_bytes: int
    max_image_pixels: int
    in_front: dict[str, int] = field(default_factory=dict)  # task ref -> positions before rows

    @property
    def vocab(self) -> int | None:
        """The tokenizer's size, which bounds `top_k` (None on a vision backbone)."""
        backbone = self.engine.backbone
        return None if backbone.spec.kind == "vision" else len(backbone.tokenizer)

    def sampling(self, fields: Any) -> Sampling:
        """A body's sampling fields, checked (a bad value is a 400 naming the field)."""
        return check_sampling(
            fields.temperature,
            fields.top_p,
            fields.top_k,
            fields.seed,
            fields.stop,
            vocab=self.vocab,
        )

    def bounded(self, inputs: Iterable[Input], count: int) -> list[Input]:
        """The request's `count` inputs, checked as each is built (tokenized): the first
        that takes the request past the per-request token bound refuses it, so an
        oversized request is not even tokenized whole."""
        taken, cost = [], 0
        limit = self.request_limit
        for request in inputs:
            taken.append(request)
            cost += request.tokens + (request.max_tokens or 0)
            if cost > limit:
                raise ApiError(
                    413,
                    f"request too large: the first {len(taken)} of its {count} inputs come to "
                    f"{cost:,} tokens (template tokens, plus max_tokens for generation) and the "
                    f"server takes at most {limit:,} per request (--max-batch-tokens); "
                    "send fewer or shorter inputs per request, or raise the flag",
                )
        return taken


def get_state(request: Request) -> ServeState:
    return request.app.state.serve


State = Annotated[ServeState, Depends(get_state)]
