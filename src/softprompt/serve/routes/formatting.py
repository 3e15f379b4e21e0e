"""OpenAI answer shapes: choices, token log-probs and usage.

`usage.prompt_tokens` counts what ran before generation (the prompt's virtual tokens,
the template and BOS), not only the user's text, as a client paying per token expects.
"""

from __future__ import annotations

from typing import Any

import torch

from softprompt.inject.cached import CachedPrompt
from softprompt.serve.engine import Request as Input
from softprompt.serve.routes.state import ServeState

TokenLogprobs = tuple[int, float, list[tuple[int, float]]]  # id, log-prob, top (id, lp)
Spelled = tuple[str, float, list[tuple[str, float]]]  # text, log-prob, top (text, lp)


def _finite(logprob: float) -> float:
    """A log-prob JSON can carry: a token the sampler had cut off (-inf) reads -9999.0,
    as vLLM writes it."""
    return max(logprob, -9999.0)


def prefix_tokens(state: ServeState, served: Any) -> int:
    """Positions before a row's own tokens: the prompt's virtual tokens (embedded and
    per-layer K/V), the template head a decoder caches with them, and BOS."""
    prompt = served.prompt
    if isinstance(prompt, CachedPrompt) and prompt.source is not None:
        with torch.no_grad():
            prompt = prompt.source()  # the real prompt: virtual tokens + template head
    elif prompt is None or isinstance(prompt, CachedPrompt):
        with torch.no_grad():
            prompt = served.model.prompt()
    spec = state.engine.backbone.spec  # a decoder's rows start with BOS, before the prompt
    return prompt.length + int(spec.kind == "causal-lm" and spec.bos_token_id is not None)


def prompt_tokens(state: ServeState, requests: list[Input]) -> int:
    """The tokens that ran before generation, summed over rows: what `prefix_tokens`
    counts and the row's filled template (the user's text inside it)."""
    total = 0
    for r in requests:
        ref = r.served.entry.ref
        if ref not in state.in_front:
            state.in_front[ref] = prefix_tokens(state, r.served)
        total += r.tokens + state.in_front[ref]
    return total


def usage(
    state: ServeState, requests: list[Input], results: list[dict[str, Any]]
) -> dict[str, int]:
    prompt = prompt_tokens(state, requests)
    used = sum(r.get("tokens", 1) for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": used, "total_tokens": prompt + used}


def choice(
    state: ServeState, index: int, r: dict[str, Any], chat: bool, top: int | None
) -> dict[str, Any]:
    """One answer as an OpenAI choice (a classification task's carries its `scores`)."""
    text = r.get("text", r.get("label"))
    reason = r.get("finish_reason", "stop")
    logprobs = r.get("logprobs", [])
    if chat:
        message = {"role": "assistant", "content": text}
        out = {"index": index, "message": message, "finish_reason": reason}
        out["logprobs"] = None if top is None else chat_logprobs(state, logprobs, text)
    else:
        out = {"index": index, "text": text, "finish_reason": reason}
        out["logprobs"] = None if top is None else completion_logprobs(state, logprobs, text)
    if "scores" in r:
        out["scores"] = r["scores"]
    return out


def spelled(state: ServeState, rows: list[TokenLogprobs], answer: str) -> list[Spelled]:
    """Each generated token as the text it adds after the tokens before it (a lone
    token decodes without its leading space on SentencePiece tokenizers), and each
    alternative as the text it would have added there. Tokens after the `answer` ends
    (those a stop sequence cut off) are left out."""
    decode = state.engine.backbone.tokenizer.decode
    ids: list[int] = []
    before = ""

    def piece(token: int) -> str:
        text = decode([*ids, token])
        return text[len(before) :] if text.startswith(before) else decode([token])

    out = []
    for token, logprob, alternatives in rows:
        if len(before) >= len(answer):
            break
        others = [(piece(a), _finite(lp)) for a, lp in alternatives]
        out.append((piece(token), _finite(logprob), others))
        ids.append(token)
        before = decode(ids)
    return out


def completion_logprobs(
    state: ServeState, rows: list[TokenLogprobs], answer: str
) -> dict[str, Any]:
    """OpenAI completions' shape: tokens, their log-probs, the top alternatives as
    {token: log-prob}, and each token's offset in the text."""
    tokens = spelled(state, rows, answer)
    offsets = [sum(len(t) for t, _, _ in tokens[:i]) for i in range(len(tokens))]
    return {
        "tokens": [t for t, _, _ in tokens],
        "token_logprobs": [lp for _, lp, _ in tokens],
        "top_logprobs": [dict(alternatives) for _, _, alternatives in tokens],
        "text_offset": offsets,
    }


def chat_logprobs(state: ServeState, rows: list[TokenLogprobs], answer: str) -> dict[str, Any]:
    """OpenAI chat's shape: per token its text, log-prob, UTF-8 bytes and alternatives."""

    def item(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    content = [
        dict(item(t, lp), top_logprobs=[item(a, alp) for a, alp in alternatives])
        for t, lp, alternatives in spelled(state, rows, answer)
    ]
    return {"content": content, "refusal": None}
