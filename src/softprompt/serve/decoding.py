"""The decoding loop of mixed generation batches: each row with its own sampling
parameters, token limit and stop sequences, streaming its text as it grows."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.cache_utils import DynamicCache

from softprompt.inject import RowPrompts
from softprompt.serve.sampling import (
    Sampling,
    find_stop,
    held_back,
    next_tokens,
    token_logprobs,
)
from softprompt.tasks.generation import pad_left


class RowText:
    """One generating row's text as its tokens arrive: where a stop sequence cuts it, and
    the new text since the last call for a stream. A stream holds back an ending that
    could still grow into a stop sequence, and half of a multi-byte character."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        stops: list[str],
        on_token: Callable[[str], None] | None,
    ) -> None:
        self.decode, self.stops, self.on_token = decode, stops, on_token
        self.sent = ""
        self.cut: str | None = None  # the text before the first stop sequence
        # per generated token, when the row asked for log-probs: (id, log-prob, alternatives)
        self.logprobs: list[tuple[int, float, list[tuple[int, float]]]] = []

    def push(self, tokens: list[int]) -> bool:
        """After each new token: True when a stop sequence has appeared (the row is done)."""
        if not self.stops and self.on_token is None:
            return False
        text = self.decode(tokens)
        if self.stops:
            at = find_stop(text, self.stops)
            if at >= 0:
                self.cut = text[:at]
                return True
        if self.on_token is not None and not text.endswith("\ufffd"):
            self._send(text[: len(text) - held_back(text, self.stops)])
        return False

    def finish(self, tokens: list[int]) -> str:
        """The row's final text; a stream gets whatever it has not been sent yet."""
        text = self.cut if self.cut is not None else self.decode(tokens)
        if self.on_token is not None:
            self._send(text)
        return text

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.on_token(text[len(self.sent) :])
            self.sent = text


@torch.no_grad()
def decode(
    injector,
    prompts: RowPrompts,
    contexts: list[list[int]],
    *,
    pad_id: int,
    eos_id: int | None,
    max_new_tokens: list[int],
    sampling: list[Sampling] | None = None,
    texts: list[RowText] | None = None,
) -> list[tuple[list[int], str]]:
    """Decoding as `tasks.generation.greedy_decode` does it, each row with its own sampling
    parameters and random stream, and why each row stopped: "stop" at EOS or a stop
    sequence (`texts` watch for those and stream), "length" at its token limit."""
    device = injector.device
    ids, mask = (t.to(device) for t in pad_left(contexts, pad_id))  # (B, T)
    batch = ids.shape[0]
    sampling = sampling or [Sampling() for _ in range(batch)]
    generators = [s.generator(device) for s in sampling]
    prefix = injector.prefix_cache(prompts, batch)
    cache = prefix.cache if prefix.cache is not None else DynamicCache(config=injector.config)
    positions = prefix.lengths[:, None] + (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    full_mask = torch.cat([prefix.mask, mask], 1)  # (B, m + T)
    hidden = injector.step(ids, full_mask, positions, cache)  # (B, T, d)
    out: list[list[int]] = [[] for _ in range(batch)]
    reasons = ["length"] * batch
    done = [limit <= 0 for limit in max_new_tokens]
    next_pos = positions[:, -1:]
    for _ in range(max(max_new_tokens)):
        logits = injector.logits(hidden[:, -1])  # (B, V)
        token = next_tokens(logits, sampling, generators)  # B ids
        for i in range(batch):
            if done[i]:
                continue
            if eos_id is not None and token[i] == eos_id:
                done[i], reasons[i] = True, "stop"
                continue
            out[i].append(token[i])
            if texts is not None and sampling[i].logprobs is not None:
                texts[i].logprobs.append(
                    token_logprobs(logits[i], sampling[i], token[i], sampling[i].logprobs)
                )
            if texts is not None and texts[i].push(out[i]):
                done[i], reasons[i] = True, "stop"
                continue
            done[i] = len(out[i]) >= max_new_tokens[i]
        if all(done):
            break
        next_pos = next_pos + 1
        full_mask = torch.cat([full_mask, mask.new_ones(batch, 1)], 1)
        step_ids = torch.tensor(token, device=device).unsqueeze(1)  # (B, 1)
        hidden = injector.step(step_ids, full_mask, next_pos, cache)
    return list(zip(out, reasons, strict=True))
