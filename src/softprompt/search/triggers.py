"""Trigger tokens: n vocabulary words placed between the text and the template's answer cue.

    "Review: {text}\\nSentiment:"  + triggers (t1 t2 t3)  ->  "Review: {text} t1 t2 t3\\nSentiment:"

AutoPrompt (Shin et al. 2020) puts its triggers there, and so does our RLPrompt
policy: only the template's tail differs between candidates, so the scorer runs
each example's text once and only the few tail tokens per candidate.

Candidates are built from the template *string*, so what is scored is exactly
what a saved prompt file holds (a word that would re-tokenize differently is
scored as it re-tokenizes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from softprompt.data import Example
from softprompt.inject.causal import CausalInjector
from softprompt.search.base import TaskSpec
from softprompt.search.scorer import Candidate
from softprompt.search.vocab import word_token_ids
from softprompt.tasks.template import Template


class Triggers:
    """Builds trigger candidates for `spec` and the loss gradient w.r.t. trigger embeddings."""

    def __init__(self, spec: TaskSpec, vocab: int) -> None:
        self.spec = spec
        self.tokenizer = spec.backbone.tokenizer
        self.head, self.tail = spec.template.split("{text}")
        self.pool = torch.tensor(word_token_ids(spec.backbone, vocab))  # (K,)
        self.words = {int(i): self.tokenizer.decode([int(i)]).strip() for i in self.pool}
        self.injector = CausalInjector(spec.backbone)  # the model's layers and LM head

    def template(self, ids: list[int]) -> str:
        return self.head + "{text} " + " ".join(self.words[i] for i in ids) + self.tail

    def candidate(self, ids: list[int]) -> Candidate:
        return self.spec.candidate(self.template(ids))

    def gradient(self, ids: list[int], examples: list[Example]) -> torch.Tensor:
        """d(loss)/d(trigger embeddings) on `examples`: (n, d), the loss as the scorer's."""
        backbone = self.spec.backbone
        table = self.injector.embedding_table()  # (V, d)
        triggers = table.rows(ids).requires_grad_(True)  # (n, d) float32
        candidate = self.candidate(ids)
        tail_ids = list(self.tokenizer(self.tail, add_special_tokens=False)["input_ids"])
        bos = [] if backbone.spec.bos_token_id is None else [backbone.spec.bos_token_id]
        text = Template(candidate.template).pieces("")[1]
        rows = []
        for e in examples:
            body = self.tokenizer(text + e.text, add_special_tokens=False)["input_ids"]
            front = bos + list(candidate.prefix) + body[: self.spec.max_text_tokens]
            rows.append(
                torch.cat([table.rows(front), triggers, table.rows(tail_ids)])
                if tail_ids
                else torch.cat([table.rows(front), triggers])
            )  # (T_i, d)
        width = max(r.shape[0] for r in rows)
        embeds = torch.zeros(len(rows), width, table.shape[1])  # (B, T, d)
        mask = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T)
        for i, r in enumerate(rows):
            embeds[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = 1
        hidden = self.injector.run_core(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        last = hidden[torch.arange(len(rows)), mask.sum(1) - 1]  # (B, d)
        scores = self.spec.verbalizer_ids.class_scores(last, self.injector.logits)
        lookup = {label: i for i, label in enumerate(self.spec.labels)}
        targets = torch.tensor([lookup[e.label] for e in examples])  # (B,)
        F.cross_entropy(scores, targets).backward()
        return triggers.grad  # (n, d)
