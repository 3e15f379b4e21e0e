"""Templates: a string with one `{text}` slot, tokenized piecewise so text can be cut."""

from __future__ import annotations

from dataclasses import dataclass

from softprompt.errors import ConfigError

SLOT = "{text}"


@dataclass(frozen=True)
class Template:
    """Splits `template` at `{text}` into a fixed prefix and suffix.

    Whitespace at the end of the prefix moves onto the text, so BPE tokenizers
    see " great" (one token, as in pretraining) rather than " " + "great".
    """

    template: str = SLOT

    def __post_init__(self) -> None:
        if self.template.count(SLOT) != 1:
            raise ConfigError(
                f"task.template: must contain {SLOT} exactly once, got {self.template!r}"
            )

    def pieces(self, text: str) -> tuple[str, str, str]:
        prefix, suffix = self.template.split(SLOT)
        stripped = prefix.rstrip()
        return stripped, prefix[len(stripped) :] + text, suffix

    def encode(self, tokenizer, text: str, max_text_tokens: int) -> list[int]:
        """Token ids of the filled template (no special tokens), text cut to a budget."""
        prefix, body, suffix = self.pieces(text)
        ids = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
        return ids(prefix) + ids(body)[:max_text_tokens] + ids(suffix)
