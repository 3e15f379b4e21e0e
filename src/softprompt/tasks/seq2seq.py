"""Tasks on encoder-decoders (T5, BART): label words and text scored by the decoder.

The input goes to the encoder with the tokenizer's own special tokens (T5's ``</s>``,
BART's ``<s> ... </s>``), as PEFT's SEQ_2_SEQ_LM adapters read it. A label word is
scored by teacher forcing: the decoder reads [start] + word[:-1] and each of the word's
tokens is scored where it is predicted. Single-token words need one decoder step for
all of them (their logits, as on a causal LM); longer words run one decoder row per
(input, word) over one encoder pass and sum their tokens' log-probabilities.
Generation trains on target + EOS after the start token and decodes greedily.
"""

from __future__ import annotations

from typing import Any

import torch

from softprompt.backbones import Backbone
from softprompt.data import Example
from softprompt.errors import ConfigError
from softprompt.inject import EncoderDecoderInjector, Prompt, RowPrompts
from softprompt.tasks.base import TaskConfig, TaskOutput, pad_right, register_task
from softprompt.tasks.classification import VerbalizerTask, class_loss
from softprompt.tasks.generation import GenerationTask


def special_ends(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds in front of and after a text (BART: [<s>], [</s>])."""
    plain = list(tokenizer("hi", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("hi", add_special_tokens=True)["input_ids"])
    at = next((i for i in range(len(full)) if full[i : i + len(plain)] == plain), 0)
    return full[:at], full[at + len(plain) :]


class _EncoderInput:
    """What both seq2seq tasks share: encoder rows with special tokens, the start token."""

    merges_rows = False  # the decoder reads each task's own words: one pass per task

    def _seq2seq_setup(self, config: TaskConfig, backbone: Backbone) -> None:
        if self.template.has_slots:
            raise ConfigError(
                f"task.template: {backbone.name} is an encoder-decoder; its soft prompt goes "
                "in front of the encoder's input, so the template takes no {p} slots"
            )
        self.front, self.back = special_ends(backbone.tokenizer)
        self.start_id = int(backbone.model.config.decoder_start_token_id)

    def encoder_batch(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        rows = [self.front + ids + self.back for ids in self.contexts(examples)]
        ids, mask = pad_right(rows, self.pad_id)
        return {"input_ids": ids, "attention_mask": mask}

    @staticmethod
    def decoder_hidden(
        injector: EncoderDecoderInjector, prompts: Prompt | RowPrompts, batch: dict
    ) -> torch.Tensor:
        """The decoder's states for the batch's teacher-forced decoder rows."""
        return injector.decoder_states(
            prompts,
            batch["input_ids"],
            batch["attention_mask"],
            batch["decoder_input_ids"],
            batch["decoder_attention_mask"],
            batch.get("decoder_rows"),
        )  # (R, T, d)

    @staticmethod
    def token_log_probs(
        injector: EncoderDecoderInjector, hidden: torch.Tensor, tokens: torch.Tensor
    ) -> torch.Tensor:
        """(R, T, d) states, (R, T) next tokens -> (R, T) their log-probabilities."""
        log_probs = injector.logits(hidden).log_softmax(-1)  # (R, T, V)
        return log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (R, T)


@register_task("seq2seq-verbalizer")
class Seq2SeqVerbalizerTask(_EncoderInput, VerbalizerTask):
    """Label words scored by the decoder: (B, W) word scores -> (B, C) class scores."""

    def __init__(self, config: TaskConfig, backbone: Backbone) -> None:
        super().__init__(config, backbone)
        self._seq2seq_setup(config, backbone)
        words = [ids for class_ids in self.word_ids for ids in class_ids]  # W word id lists
        self.n_words = len(words)
        self.word_inputs, self.word_mask = pad_right([[self.start_id, *w[:-1]] for w in words], 0)
        self.word_tokens, _ = pad_right(words, 0)  # (W, L)

    def use_label_embeddings(self, rows) -> None:
        raise ConfigError(
            "method.name: dart learns label tokens of a causal LM's head; on an "
            "encoder-decoder use soft-prompt or prefix-tuning"
        )

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        batch = self.encoder_batch(examples)
        rows = len(examples)
        if self.single_token:  # one decoder step per input scores every word
            batch["decoder_input_ids"] = torch.full((rows, 1), self.start_id)
            batch["decoder_attention_mask"] = torch.ones(rows, 1, dtype=torch.long)
        else:  # one decoder row per (input, word)
            batch["decoder_input_ids"] = self.word_inputs.repeat(rows, 1)  # (B * W, L)
            batch["decoder_attention_mask"] = self.word_mask.repeat(rows, 1)
            batch["decoder_rows"] = torch.arange(rows).repeat_interleave(self.n_words)
        return self.with_targets(batch, examples)

    def forward(
        self,
        injector: EncoderDecoderInjector,
        prompts: Prompt | RowPrompts,
        batch: dict[str, torch.Tensor],
    ) -> TaskOutput:
        hidden = self.decoder_hidden(injector, prompts, batch)  # (B, 1, d) or (B * W, L, d)
        rows = batch["input_ids"].shape[0]
        if self.single_token:
            words = torch.tensor(self.first_tokens, device=hidden.device)  # (W,)
            word_scores = injector.logits(hidden[:, 0], words)  # (B, W)
        else:
            tokens = self.word_tokens.to(hidden.device).repeat(rows, 1)  # (B * W, L)
            mask = batch["decoder_attention_mask"]
            picked = self.token_log_probs(injector, hidden, tokens)  # (B * W, L)
            word_scores = (picked * mask).sum(-1).view(rows, self.n_words)  # (B, W)
        return class_loss(self._class_scores(word_scores), batch)

    def score(self, injector, hidden, batch) -> TaskOutput:
        raise ConfigError(
            "tasks: an encoder-decoder task scores its own rows (the decoder reads label "
            "words), so it runs its own pass, not a merged one (merges_rows is False)"
        )


@register_task("seq2seq-generation")
class Seq2SeqGenerationTask(_EncoderInput, GenerationTask):
    """Target text (+ EOS) after the decoder start token; greedy decoding."""

    def __init__(self, config: TaskConfig, backbone: Backbone) -> None:
        super().__init__(config, backbone)
        self._seq2seq_setup(config, backbone)

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        batch = self.encoder_batch(examples)
        targets = [self._target_ids(e.label) for e in examples]
        inputs, mask = pad_right([[self.start_id, *t[:-1]] for t in targets], self.pad_id)
        batch["decoder_input_ids"], batch["decoder_attention_mask"] = inputs, mask
        batch["score_tokens"], _ = pad_right(targets, 0)  # (B, T)
        return batch

    def forward(
        self,
        injector: EncoderDecoderInjector,
        prompts: Prompt | RowPrompts,
        batch: dict[str, torch.Tensor],
    ) -> TaskOutput:
        hidden = self.decoder_hidden(injector, prompts, batch)  # (B, T, d)
        token_lp = self.token_log_probs(injector, hidden, batch["score_tokens"])  # (B, T)
        mask = batch["decoder_attention_mask"]
        return TaskOutput(loss=-(token_lp * mask).sum() / mask.sum())  # mean over targets

    def score(self, injector, hidden, batch) -> TaskOutput:
        return Seq2SeqVerbalizerTask.score(self, injector, hidden, batch)

    def decode_rows(
        self,
        injector: EncoderDecoderInjector,
        prompts: Prompt | RowPrompts,
        contexts: list[list[int]],
        *,
        max_new_tokens: list[int],
        virtual: list[list[int]] | None = None,
    ) -> list[list[int]]:
        """Greedy decoding from the decoder start token, each row from its own prompt; the
        encoder reads each context once, with the tokenizer's special tokens."""
        ids, mask = pad_right([self.front + c + self.back for c in contexts], self.pad_id)
        device = injector.device
        return injector.generate(
            prompts,
            ids.to(device),
            mask.to(device),
            max_new_tokens=max_new_tokens,
            stop_ids=() if self.eos_id is None else (self.eos_id,),
        )
