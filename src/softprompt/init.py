"""Initial values for prompt embeddings: pure functions of the backbone and a seed.

Init matters a lot for prompt tuning (PEFT's own GSM8K benchmark: 5.7% from
random init vs 34.3% from sampled vocabulary), so every option of Lester et al.
is here: random, sampled vocabulary, a text string, and class label words.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from softprompt.backbones import Backbone
from softprompt.errors import ConfigError
from softprompt.inject import token_embeddings  # so a prompt starts among real tokens

# Lester et al. sample from the 5,000 most common tokens; BPE/WordPiece ids are
# roughly ordered by frequency, so the first ids (minus specials) stand in for that.
VOCAB_SAMPLE_POOL = 5000


def _sample_ids(backbone: Backbone, count: int, generator: torch.Generator) -> torch.Tensor:
    special = set(backbone.tokenizer.all_special_ids)
    vocab = backbone.spec.vocab_size
    pool = torch.tensor(
        [i for i in range(min(vocab, VOCAB_SAMPLE_POOL + len(special))) if i not in special]
    )
    picks = torch.randint(0, len(pool), (count,), generator=generator)
    return pool[picks]


def init_random(
    backbone: Backbone, n_tokens: int, generator: torch.Generator, **_: object
) -> torch.Tensor:
    """Normal noise scaled to the embedding table's own spread (uniform [-0.5, 0.5]
    in the paper assumes T5's scale; matching the table keeps the scale right for any model)."""
    pool = torch.arange(min(backbone.spec.vocab_size, VOCAB_SAMPLE_POOL))
    std = token_embeddings(backbone, pool).std().item()
    return torch.randn(n_tokens, backbone.spec.hidden_size, generator=generator) * std  # (n, d)


def init_vocab(
    backbone: Backbone, n_tokens: int, generator: torch.Generator, **_: object
) -> torch.Tensor:
    """Embeddings of n tokens sampled from the common part of the vocabulary."""
    ids = _sample_ids(backbone, n_tokens, generator)
    return token_embeddings(backbone, ids)  # (n, d)


def init_text(
    backbone: Backbone,
    n_tokens: int,
    generator: torch.Generator,
    text: str | None = None,
    **_: object,
) -> torch.Tensor:
    """Embeddings of a string's tokens, repeated or cut to n (PEFT's TEXT init)."""
    ids = backbone.tokenizer(text or "", add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError("method.init_text: the text has no tokens; give a non-empty string")
    ids = (ids * (n_tokens // len(ids) + 1))[:n_tokens]
    return token_embeddings(backbone, torch.tensor(ids))  # (n, d)


def init_labels(
    backbone: Backbone,
    n_tokens: int,
    generator: torch.Generator,
    label_token_ids: list[list[int]] | None = None,
    **_: object,
) -> torch.Tensor:
    """Class label embeddings first (each label's tokens averaged), the rest sampled vocab.

    Lester et al.'s best init: prompt tokens start as the words the task is about.
    """
    if not label_token_ids:
        raise ConfigError("method.init: 'labels' needs a task with label words (a verbalizer)")
    rows = [token_embeddings(backbone, torch.tensor(ids)).mean(0) for ids in label_token_ids]
    rows = rows[:n_tokens]
    rest = init_vocab(backbone, n_tokens - len(rows), generator) if n_tokens > len(rows) else None
    stacked = torch.stack(rows)  # (C, d)
    return stacked if rest is None else torch.cat([stacked, rest])  # (n, d)


def init_file(
    backbone: Backbone,
    n_tokens: int,
    generator: torch.Generator,
    path: str | None = None,
    file_embeddings: Callable[[str], torch.Tensor] | None = None,
    **_: object,
) -> torch.Tensor:
    """The virtual tokens of another prompt file for this backbone (SPoT-style transfer:
    start from a prompt trained on a related task), read by `file_embeddings` (the model's
    loader, passed in: a file is read through the model that wrote it); fewer tokens than
    asked are completed from the vocabulary, more are cut."""
    if not path:
        raise ConfigError("method.init_file: required when method.init is 'file'")
    if file_embeddings is None:
        raise ConfigError(
            "method.init_file: this method was built without a prompt-file reader; "
            "build it through softprompt.model.PromptModel"
        )
    embeds = file_embeddings(path)[:n_tokens]  # (<= n, d)
    if embeds.shape[0] < n_tokens:
        embeds = torch.cat([embeds, init_vocab(backbone, n_tokens - embeds.shape[0], generator)])
    return embeds.clone()  # (n, d)


INITIALIZERS: dict[str, Callable[..., torch.Tensor]] = {
    "random": init_random,
    "vocab": init_vocab,
    "text": init_text,
    "labels": init_labels,
    "file": init_file,
}


def initialize(
    name: str, *, n_tokens: int, backbone: Backbone, generator: torch.Generator, **kwargs: object
) -> torch.Tensor:
    """Dispatch to an initializer by name: -> (n_tokens, d) float32."""
    if name not in INITIALIZERS:
        raise ConfigError(
            f"method.init: unknown init {name!r}; choose one of {', '.join(INITIALIZERS)}"
        )
    return INITIALIZERS[name](backbone, n_tokens, generator, **kwargs)
