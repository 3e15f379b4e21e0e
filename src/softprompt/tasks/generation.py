"""Text in, text out: LM loss on the target tokens only, greedy decoding.

Logits are computed only at the positions that predict a target token, so a
long input costs no vocabulary projection.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from softprompt.backbones import Backbone
from softprompt.data import Example
from softprompt.inject import Injector, Prompt
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


@register_task(lambda c, b: c.kind == "generation" and b.spec.kind == "causal-lm")
class GenerationTask(TemplatedTask):
    def __init__(self, config: TaskConfig, backbone: Backbone) -> None:
        super().__init__(config, backbone)
        self.eos_id = backbone.spec.eos_token_id
        object.__setattr__(self, "lm_head", backbone.output_embeddings())  # (V, d)

    def _target_ids(self, target: str) -> list[int]:
        ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        return ids + ([self.eos_id] if self.eos_id is not None else [])

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        targets = [self._target_ids(e.label) for e in examples]
        return continuation_batch(self.contexts(examples), targets, self.pad_id)

    def forward(
        self, injector: Injector, prompt: Prompt, batch: dict[str, torch.Tensor]
    ) -> TaskOutput:
        hidden = injector.hidden_states(
            prompt, batch["input_ids"], batch["attention_mask"]
        )  # (B, T, d)
        token_lp = continuation_log_probs(hidden, batch, self.lm_head)  # (B, K)
        loss = -token_lp.sum() / batch["score_mask"].sum()  # mean over target tokens
        return TaskOutput(loss=loss)

    @torch.no_grad()
    def generate(self, injector: Injector, prompt: Prompt, texts: list[str]) -> list[str]:
        """Greedy decoding with the prompt prefix computed once and cached."""
        contexts = self.contexts([Example(text=t, label="") for t in texts])
        ids, mask = pad_left(contexts, self.pad_id)  # (B, T)
        batch = ids.shape[0]
        cache, m = injector.prefix_cache(prompt, batch)
        cache = cache if cache is not None else DynamicCache(config=injector.config)
        positions = m + (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        full_mask = torch.cat([mask.new_ones(batch, m), mask], 1)
        hidden = injector.step(ids, full_mask, positions, cache)  # (B, T, d)
        out: list[list[int]] = [[] for _ in range(batch)]
        done = torch.zeros(batch, dtype=torch.bool)
        next_pos = positions[:, -1:]
        for _ in range(self.config.max_new_tokens):
            token = (hidden[:, -1] @ self.lm_head.T).argmax(-1)  # (B,)
            for i in range(batch):
                if not done[i]:
                    out[i].append(int(token[i]))
            done |= token == (self.eos_id if self.eos_id is not None else -1)
            if bool(done.all()):
                break
            next_pos = next_pos + 1
            full_mask = torch.cat([full_mask, mask.new_ones(batch, 1)], 1)
            hidden = injector.step(token.unsqueeze(1), full_mask, next_pos, cache)
        return [
            self.tokenizer.decode([t for t in row if t != self.eos_id], skip_special_tokens=True)
            for row in out
        ]

    def predict(
        self, injector: Injector, prompt: Prompt, examples: list[Example]
    ) -> list[dict[str, Any]]:
        return [{"text": t} for t in self.generate(injector, prompt, [e.text for e in examples])]
