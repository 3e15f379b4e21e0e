"""DART: differentiable prompts (Zhang et al. 2022, "Differentiable Prompt Makes Pre-trained
Language Models Better Few-shot Learners", arXiv:2108.13161).

Two kinds of trainable embeddings on a frozen backbone, nothing else:

* template tokens `template` (n, d): the virtual tokens of the template's `{p:N}`
  slots (or, without slots, in front of the input), initialised from real tokens'
  embeddings (`init: text` with the manual template's words, as the paper does; or
  any init of `VirtualTokensConfig`);
* label tokens `labels` (C, d): one output row per class that the verbalizer scores
  the answer position against instead of the label word's frozen row (tasks/
  classification.py `use_label_embeddings`), initialised from the mean of the output
  rows of the tokens of the class's first label word: for a one-token word that is
  its own row, so step 0 scores exactly as the manual label words do. A multi-token
  word's first token alone would tie classes whose words share it (newsgroup names:
  ' comp.graphics' and ' comp.windows.x' both begin with ' comp'), and tied rows
  score those classes alike at step 0.

The fluency objective, adapted to a causal decoder. DART's masked-LM loss masks input
tokens and predicts them with the template (and label) tokens in place, so the learned
template stays a context the model can read. A decoder predicts a token from its left
context only, so masking is implicit: for a random `fluency_rate` share of the row's
real tokens (never the first, never a slot, never the label word's own tokens) the loss
is the next-token cross-entropy of that token given everything before it, with the
trainable template embeddings in place; its gradient reaches the template tokens to
the left of the text (the label token sits at the end of the row, so only the class
loss trains it). The share is drawn from a generator seeded by the batch's token ids
and `seed`, so a resumed run replays it. The loss enters training through the
method's `auxiliary_loss`, which the model adds in training mode; the loop never
sees the method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from softprompt.backbones import Backbone
from softprompt.errors import ConfigError
from softprompt.inject import Injector, Prompt
from softprompt.inject.label_words import head_rows
from softprompt.methods.registry import MethodContext, register_method
from softprompt.methods.virtual_tokens import VirtualTokensConfig, initial_embeddings


@dataclass
class DartConfig(VirtualTokensConfig):
    """`n_tokens` template tokens (set it to the template's slot count); `fluency_weight`
    scales the fluency loss (0 turns it off); `fluency_rate` is the share of each row's
    tokens it predicts."""

    n_tokens: int = 4
    fluency_weight: float = 1.0
    fluency_rate: float = 0.15

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.fluency_weight >= 0:
            raise ConfigError(f"method.fluency_weight: must be >= 0, got {self.fluency_weight}")
        if not 0 < self.fluency_rate <= 1:
            raise ConfigError(f"method.fluency_rate: must be in (0, 1], got {self.fluency_rate}")


def word_rows(backbone: Backbone, words: list[list[int]]) -> torch.Tensor:
    """(C, d) each class's initial label token: the mean of its word's tokens' output
    rows (a one-token word's own row; see the module doc for why not the first token)."""
    return torch.stack([head_rows(backbone, ids).mean(0) for ids in words])  # (C, d)


def fluency_positions(batch: dict[str, torch.Tensor], rate: float, seed: int) -> torch.Tensor:
    """(B, T) bool: the real context tokens whose prediction the fluency loss scores."""
    ids = batch["input_ids"]  # (B, T)
    steps = torch.arange(ids.shape[1])[None, :]  # (1, T)
    context = (steps >= 1) & (steps <= batch["answer_index"].cpu()[:, None])  # (B, T)
    if "inline_index" in batch:
        context &= batch["inline_index"].cpu() < 0  # a slot is not a token to predict
    generator = torch.Generator().manual_seed(seed * 1_000_003 + int(ids.sum()))
    return context & (torch.rand(ids.shape, generator=generator) < rate)


@register_method("dart", DartConfig)
class Dart(nn.Module):
    # `softprompt methods` prints this: what it is, and when to pick it
    summary = (
        "DART: template tokens ({p:N} slots) and one label token per class as trainable "
        "embeddings, plus a fluency loss; for few-shot classification with label words"
    )

    def __init__(self, config: DartConfig, context: MethodContext) -> None:
        super().__init__()
        if not context.label_token_ids:
            raise ConfigError(
                "method.name: dart learns label tokens, so it needs label words "
                "(task.head verbalizer on a causal LM)"
            )
        self.config = config
        self.template = nn.Parameter(initial_embeddings(config, context))  # (n, d)
        self.labels = nn.Parameter(word_rows(context.backbone, context.label_token_ids))

    def forward(self) -> Prompt:
        return Prompt(embeds=self.template)  # (n, d); the task places it in its slots

    def label_embeddings(self) -> torch.Tensor:
        """(C, d) the learned output rows of the classes' label tokens."""
        return self.labels

    def flatten(self) -> None:
        """Already flat: the template and label tokens are what the model uses."""
        return None

    def auxiliary_loss(
        self, injector: Injector, prompt: Prompt, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The fluency loss (weighted) on the task's collated batch; see the module doc."""
        zero = self.template.sum() * 0.0
        if self.config.fluency_weight == 0:
            return zero
        picked = fluency_positions(batch, self.config.fluency_rate, self.config.seed)
        if not bool(picked.any()):
            return zero
        hidden = injector.hidden_states(
            prompt,
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("positions"),
            batch.get("inline_index"),
        )  # (B, T, d)
        rows, cols = picked.nonzero(as_tuple=True)  # (K,), (K,)
        rows, cols = rows.to(hidden.device), cols.to(hidden.device)
        logits = injector.logits(hidden[rows, cols - 1])  # (K, V)
        loss = F.cross_entropy(logits.float(), batch["input_ids"][rows, cols])
        return self.config.fluency_weight * loss
