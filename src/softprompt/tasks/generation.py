"""Text in, text out: LM loss on the target tokens only, greedy decoding.

Logits are computed only at the positions that predict a target token, so a
long input costs no vocabulary projection. Decoding takes per-row prompts, so one
batch can generate for several tasks, each row from its own prompt's cached prefix.
"""

from __future__ import annotations

from typing import Any

import torch

from softprompt.backbones import Backbone
from softprompt.data import Example
from softprompt.inject import Injector, Prompt, RowPrompts
from softprompt.inject.decode import decode, pad_left  # noqa: F401 (pad_left: re-export)
from softprompt.tasks.base import (
    TaskConfig,
    TaskOutput,
    TemplatedTask,
    continuation_batch,
    continuation_log_probs,
    register_task,
)


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
    """Greedy continuation of each context (ids without BOS), each row from its own prompt,
    through the one decoding loop (`inject.decode`); a row that ends at EOS keeps it.

    Each row's prompt prefix comes from the injector (computed once per distinct prompt),
    and each row stops at EOS or at its own `max_new_tokens`. `virtual` marks template
    slots per token."""
    rows = decode(
        injector,
        prompts,
        contexts,
        pad_id=pad_id,
        max_new_tokens=max_new_tokens,
        stop_ids=() if eos_id is None else (eos_id,),
        virtual=virtual,
    )
    return [r.tokens + ([eos_id] if r.reason == "stop" else []) for r in rows]


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
        rows = self.decode_rows(injector, prompts, contexts, max_new_tokens=limits, virtual=virtual)
        return [self.decode(row) for row in rows]

    def decode_rows(
        self,
        injector: Injector,
        prompts: Prompt | RowPrompts,
        contexts: list[list[int]],
        *,
        max_new_tokens: list[int],
        virtual: list[list[int]] | None = None,
    ) -> list[list[int]]:
        """Greedy ids per row, EOS kept where a row ends on it; rows may carry different
        prompts (a mixed batch of generation tasks decodes through here in one loop)."""
        return greedy_decode(
            injector,
            prompts,
            contexts,
            pad_id=self.pad_id,
            eos_id=self.eos_id,
            max_new_tokens=max_new_tokens,
            virtual=virtual,
        )

    def predict(
        self, injector: Injector, prompts: Prompt | RowPrompts, examples: list[Example]
    ) -> list[dict[str, Any]]:
        return [{"text": t} for t in self.generate(injector, prompts, [e.text for e in examples])]
