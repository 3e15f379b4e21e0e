"""Label words: the Verbalizer half of OpenPrompt's Template/Verbalizer split.

A `Template` (tasks/template.py) turns text into ids around slots; a `Verbalizer` maps
each class to its label words and word scores back to class scores. Both training
(`classification.VerbalizerTask`) and discrete search (`search/scorer`) read the one
class here, so a prompt's words are tokenized, checked and pooled per class alike, and
search's accuracy equals what training's evaluation reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from softprompt.errors import ConfigError

Head = Callable[..., torch.Tensor]  # inject.head.LMHead: (R, d)[, ids] -> (R, V or K) logits


def default_words(labels: list[str]) -> dict[str, list[str]]:
    """A class's own name after a space when the task names no label words."""
    return {label: [" " + label] for label in labels}


def check_distinct_words(
    labels: list[str], words: list[list[str]], word_ids: list[list[list[int]]]
) -> None:
    """Refuse label words that tokenize alike in two classes (`words` and `word_ids` are
    per class, per word). Such classes share a score under every prompt, so nothing can
    tell them apart (two classes of one word each train at loss log 2 forever); words
    that differ only in what the tokenizer drops count as the same word."""
    owner: dict[tuple[int, ...], tuple[str, str]] = {}
    for label, class_words, class_ids in zip(labels, words, word_ids, strict=True):
        for word, ids in zip(class_words, class_ids, strict=True):
            first_label, first_word = owner.setdefault(tuple(ids), (label, word))
            if first_label != label:
                raise ConfigError(
                    f"task.verbalizer: labels {first_label!r} and {label!r} share a label "
                    f"word ({first_word!r} and {word!r} are the same tokens {ids}), so they "
                    "cannot be told apart; give each label words of its own"
                )


@dataclass
class Verbalizer:
    """Label words per class.

    `word_ids` holds each word's first token (all a word has when every word is one
    token: scored by its logit, the single-token path). `sequences` holds every word's
    tokens; when some word has several, each word scores the sum of its tokens'
    full-vocabulary log-probabilities (tasks/word_tree.py). `words` are the strings, when
    the verbalizer was built from them."""

    labels: list[str]
    word_ids: list[list[int]]  # class -> first token id of each label word
    sequences: list[list[list[int]]] = field(default_factory=list)  # class -> word -> ids
    words: list[list[str]] = field(default_factory=list)  # class -> label words

    def __post_init__(self) -> None:
        if not self.sequences:
            self.sequences = [[[i] for i in ids] for ids in self.word_ids]
        self.single_token = all(len(w) == 1 for ws in self.sequences for w in ws)
        words = [w for ws in self.sequences for w in ws]
        self.first_tokens = [w[0] for w in words]  # (W,) every word's first token, in order
        # the distinct word prefixes a candidate is extended by, and every word token
        self.steps = list(dict.fromkeys(tuple(w[:j]) for w in words for j in range(len(w))))
        self.tokens = sorted({t for w in words for t in w})

    @classmethod
    def build(cls, labels: list[str], words: dict[str, list[str]] | None, tokenizer) -> Verbalizer:
        """Tokenize each class's words (default: `default_words`); a word without tokens
        and a word two classes share are refused by name."""
        words = words or default_words(labels)
        per_class = [list(words[label]) for label in labels]
        sequences = []
        for label, class_words in zip(labels, per_class, strict=True):
            ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in class_words]
            for word, word_ids in zip(class_words, ids, strict=True):
                if not word_ids:
                    raise ConfigError(
                        f"task.verbalizer: a label word of {label!r} has no tokens "
                        f"({word!r}); give non-empty words"
                    )
            sequences.append(ids)
        check_distinct_words(labels, per_class, sequences)
        word_ids = [[ids[0] for ids in class_ids] for class_ids in sequences]
        return cls(labels=list(labels), word_ids=word_ids, sequences=sequences, words=per_class)

    def per_class(self, word_scores: torch.Tensor) -> torch.Tensor:
        """(..., W) scores of all label words -> (..., C): log-sum-exp over each class's."""
        per_class, start = [], 0
        for ids in self.word_ids:
            per_class.append(word_scores[..., start : start + len(ids)].logsumexp(-1))
            start += len(ids)
        return torch.stack(per_class, dim=-1)  # (..., C)

    def class_scores(self, hidden: torch.Tensor, head: Head) -> torch.Tensor:
        """(R, d) answer states -> (R, C) class scores (log-sum-exp over each class's words),
        through the model's own output head (bias, scaling and soft-capping included).
        With multi-token words this reads first tokens only (AutoPrompt's gradient
        signal); search's `CandidateScorer` scores whole words."""
        logits = head(hidden, torch.tensor(self.first_tokens, device=hidden.device))  # (R, W)
        return self.per_class(logits)

    def token_log_probs(self, hidden: torch.Tensor, head: Head, rows: int = 512) -> torch.Tensor:
        """(R, d) -> (R, U) full-vocabulary log-probabilities of the word tokens
        (`self.tokens`), `rows` at a time so the (rows, V) logits stay small."""
        index = torch.tensor(self.tokens, device=hidden.device)
        parts = [
            head(hidden[i : i + rows]).log_softmax(-1)[:, index]  # (rows, U)
            for i in range(0, hidden.shape[0], rows)
        ]
        return torch.cat(parts)

    def word_sums(self, step_scores: torch.Tensor) -> torch.Tensor:
        """(N, P, B, U) token log-probs after each word prefix -> (N, B, C) class scores:
        each word sums its tokens' log-probs, each class log-sum-exps its words."""
        step = {prefix: p for p, prefix in enumerate(self.steps)}
        column = {token: u for u, token in enumerate(self.tokens)}
        words = []
        for word in (w for ws in self.sequences for w in ws):
            terms = [
                step_scores[:, step[tuple(word[:j])], :, column[t]] for j, t in enumerate(word)
            ]
            words.append(torch.stack(terms).sum(0))  # (N, B)
        return self.per_class(torch.stack(words, dim=-1))  # (N, B, C)
