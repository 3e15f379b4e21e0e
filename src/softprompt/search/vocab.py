"""Which vocabulary tokens a search may put into a prompt.

Readable prompts need whole words: tokens that decode to a space followed by
letters (" movie", " great"), taken from the low ids, which byte-level BPE
vocabularies fill with the most frequent merges (as `softprompt.init` assumes).
Word-level tokenizers (the tiny test models) decode without the space; there any
alphabetic token counts.
"""

from __future__ import annotations

from functools import lru_cache

from softprompt.backbones import Backbone

POOL_SCAN = 8000  # ids scanned from the low end


def word_token_ids(backbone: Backbone, limit: int = 2000) -> list[int]:
    """Up to `limit` ids of whole-word tokens, most frequent first."""
    return list(_word_ids(id(backbone.tokenizer), backbone.tokenizer, limit))


@lru_cache(maxsize=8)
def _word_ids(_key: int, tokenizer, limit: int) -> tuple[int, ...]:
    special = set(tokenizer.all_special_ids)
    size = min(len(tokenizer), POOL_SCAN)
    pieces = {i: tokenizer.decode([i]) for i in range(size) if i not in special}
    spaced = [i for i, s in pieces.items() if len(s) > 2 and s[0] == " " and s[1:].isalpha()]
    if len(spaced) < 20:  # a word-level vocabulary: tokens decode without the space
        spaced = [i for i, s in pieces.items() if s.isalpha()]
    return tuple(spaced[:limit])


def word_strings(backbone: Backbone, limit: int = 2000) -> list[str]:
    """The same tokens as plain words (no leading space)."""
    return [backbone.tokenizer.decode([i]).strip() for i in word_token_ids(backbone, limit)]
