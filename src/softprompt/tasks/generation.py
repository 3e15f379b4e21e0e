"""Text in, text out: LM loss on the target tokens only, greedy decoding.

Logits are computed only at the positions that predict a target token, so a
long input costs no vocabulary projection. Decoding takes per-row prompts, so one
batch can generate for several tasks, each row from its own prompt's cached prefix.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from softprompt.backbones import Backbone
from softprompt.data import Example
from softprompt.inject import Injector, Prompt, RowPrompts
from softprompt.tasks.base import (
    TaskConfig,
    TaskOutput,
    TemplatedTask,
    continuation_batch,
    continuation_log_probs,
    register_task,
)


def pad_left(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad so every row's last token sits at the end: -> ids (B, T), mask (B, T)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


@torch.no_grad()
def greedy_decode(
    injector: Injector,
    prompts: Prompt | RowPrompts,
    contexts: list[list[int]],
    *,
    pad_id: int,
    eos_id: int | None,
    max_new_tokens: list[int],
    virtual: list[list[int]] | None = None,
) -> list[list[int]]:
    """Greedy continuation of each context (ids without BOS), each row from its own prompt.

    Rows are left-padded so they all end at the last column; each row's prompt prefix
    comes from the injector's cache (computed once per distinct prompt), and each row
    stops at EOS or at its own `max_new_tokens`. `virtual` marks template slots per token."""
    device = injector.device
    ids, mask = (t.to(device) for t in pad_left(contexts, pad_id))  # (B, T)
    batch = ids.shape[0]
    rows = RowPrompts.of(prompts, batch, device)
    inline = None
    if virtual is not None and any(v >= 0 for row in virtual for v in row):
        inline = pad_left([[v + 1 for v in row] for row in virtual], 0)[0].to(device) - 1
    prefix = injector.prefix_cache(rows, batch)
    cache = prefix.cache if prefix.cache is not None else DynamicCache(config=injector.config)
    positions = prefix.lengths[:, None] + (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    full_mask = torch.cat([prefix.mask, mask], 1)  # (B, m + T)
    hidden = injector.step(ids, full_mask, positions, cache, rows, inline)  # (B, T, d)
    limits = torch.tensor(max_new_tokens, device=device)  # (B,)
    out: list[list[int]] = [[] for _ in range(batch)]
    done = limits <= 0  # (B,)
    next_pos = positions[:, -1:]
    for produced in range(int(limits.max())):
        token = injector.logits(hidden[:, -1]).argmax(-1)  # (B,)
        for i in range(batch):
            if not done[i]:
                out[i].append(int(token[i]))
        done |= (token == (eos_id if eos_id is not None else -1)) | (limits <= produced + 1)
        if bool(done.all()):
            break
        next_pos = next_pos + 1
        full_mask = torch.cat([full_mask, mask.new_ones(batch, 1)], 1)
        hidden = injector.step(token.unsqueeze(1), full_mask, next_pos, cache)
    return out


@register_task("generation")
class GenerationTask(TemplatedTask):
    generates = True

    def __init__(self, config: TaskConfig, backbone: Backbone) -> None:
        super().__init__(config, backbone)
        self.eos_id = backbone.spec.eos_token_id

    def _target_ids(self, target: str) -> list[int]:
        ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        return ids + ([self.eos_id] if self.eos_id is not None else [])

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        targets = [self._target_ids(e.label) for e in examples]
        batch = continuation_batch(self.contexts(examples), targets, self.pad_id)
        return self.with_slots(batch, examples)

    def score(
        self, injector: Injector, hidden: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> TaskOutput:
        token_lp = continuation_log_probs(hidden, batch, injector)  # (B, K)
        loss = -token_lp.sum() / batch["score_mask"].sum()  # mean over target tokens
        return TaskOutput(loss=loss)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(
            [t for t in tokens if t != self.eos_id], skip_special_tokens=True
        )

    def generate(
        self, injector: Injector, prompts: Prompt | RowPrompts, texts: list[str]
    ) -> list[str]:
        """Greedy decoding with each distinct prompt's prefix computed once and cached."""
        contexts, virtual = self.rows([Example(text=t, label="") for t in texts])
        limits = [self.config.max_new_tokens] * len(texts)
        rows = greedy_decode(
            injector,
            prompts,
            contexts,
            pad_id=self.pad_id,
            eos_id=self.eos_id,
            max_new_tokens=limits,
            virtual=virtual,
        )
        return [self.decode(row) for row in rows]

    def predict(
        self, injector: Injector, prompts: Prompt | RowPrompts, examples: list[Example]
    ) -> list[dict[str, Any]]:
        return [{"text": t} for t in self.generate(injector, prompts, [e.text for e in examples])]
