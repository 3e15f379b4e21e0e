"""The native endpoints: /classify and /generate take a list of inputs, each naming its
task, so inputs of several tasks share one batch."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from softprompt.serve.engine import BadInput
from softprompt.serve.engine import Request as Input
from softprompt.serve.images import decode_image
from softprompt.serve.routes.bodies import ClassifyBody, ClassifyInput, GenerateBody
from softprompt.serve.routes.state import ServeState, State

router = APIRouter()


def classify_request(state: ServeState, item: ClassifyInput) -> Input:
    """One /classify input, checked; an image is decoded only for a task that takes one."""
    engine, image = state.engine, None
    if item.image is not None:
        served = engine.get(item.task)  # an unknown task is named before the image
        if not served.takes_images:
            raise BadInput(
                f"task {served.entry.ref} takes text, not an image; send "
                '{"task": ..., "text": ...}'
            )
        image = decode_image(
            item.image, max_bytes=state.max_image_bytes, max_pixels=state.max_image_pixels
        )
    return engine.request(item.task, item.text, generate=False, image=image)


@router.post("/classify")
async def classify(body: ClassifyBody, state: State) -> dict[str, Any]:
    """Label each input with its task's prompt; inputs of several tasks share a batch.
    Image tasks take `image` (base64 PNG/JPEG) instead of `text`."""
    requests = state.bounded((classify_request(state, i) for i in body.inputs), len(body.inputs))
    return {"results": await state.batcher.submit(requests)}


@router.post("/generate")
async def generate(body: GenerateBody, state: State) -> dict[str, Any]:
    """Continuation of each input with its task's prompt (greedy unless a temperature is
    set; each input has its own sampling parameters and stop sequences)."""
    checked = [(i, state.sampling(i)) for i in body.inputs]  # every field before any text
    requests = (
        state.engine.request(i.task, i.text, generate=True, max_tokens=i.max_tokens, sampling=s)
        for i, s in checked
    )
    results = await state.batcher.submit(state.bounded(requests, len(body.inputs)))
    hidden = ("tokens", "logprobs")
    return {"results": [{k: v for k, v in r.items() if k not in hidden} for r in results]}
