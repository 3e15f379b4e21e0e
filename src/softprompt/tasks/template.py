"""Templates: a string with one `{text}` slot and, optionally, virtual-token slots.

`{p}` (one virtual token) and `{p:N}` (N of them) place a method's virtual tokens
anywhere in the template, as P-tuning does (Liu et al. 2021): "{p:4} Review: {text}
{p:2} Sentiment:". Slots are numbered in template order, so the method's n tokens
fill them left to right. Text pieces are tokenized piecewise so the input can be cut
to a budget; whitespace at the end of the piece before `{text}` moves onto the text,
so BPE tokenizers see " great" (one token, as in pretraining) rather than " " + "great".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from softprompt.errors import ConfigError

SLOT = "{text}"
VIRTUAL = re.compile(r"\{p(?::(\d+))?\}")

Piece = tuple[str, str | int]  # ("text", literal) or ("slot", first virtual index)


@dataclass(frozen=True)
class Template:
    """Splits `template` at `{text}` into a head and a tail of literal and virtual pieces."""

    template: str = SLOT
    head: list[tuple[str, str | int]] = field(init=False, repr=False, compare=False)
    tail: list[tuple[str, str | int]] = field(init=False, repr=False, compare=False)
    slot_sizes: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.template.count(SLOT) != 1:
            raise ConfigError(
                f"task.template: must contain {SLOT} exactly once, got {self.template!r}"
            )
        before, after = self.template.split(SLOT)
        sizes: list[int] = []
        head, tail = self._pieces(before, sizes), self._pieces(after, sizes)
        object.__setattr__(self, "head", head)
        object.__setattr__(self, "tail", tail)
        object.__setattr__(self, "slot_sizes", sizes)

    @staticmethod
    def _pieces(part: str, sizes: list[int]) -> list[tuple[str, str | int]]:
        pieces: list[tuple[str, str | int]] = []
        start = 0
        for match in VIRTUAL.finditer(part):
            pieces.append(("text", part[start : match.start()]))
            count = int(match.group(1) or 1)
            if count < 1:
                raise ConfigError(f"task.template: {match.group(0)} must hold at least 1 token")
            pieces.append(("slot", sum(sizes)))
            sizes.append(count)
            start = match.end()
        pieces.append(("text", part[start:]))
        return [(k, v) for k, v in pieces if k == "slot" or v != ""]

    @property
    def has_slots(self) -> bool:
        return bool(self.slot_sizes)

    @property
    def n_virtual(self) -> int:
        return sum(self.slot_sizes)

    def _size_of(self, first: int) -> int:
        starts = [sum(self.slot_sizes[:i]) for i in range(len(self.slot_sizes))]
        return self.slot_sizes[starts.index(first)]

    def encode_pieces(
        self, tokenizer, pieces: list[tuple[str, str | int]]
    ) -> tuple[list[int], list[int]]:
        """Pieces -> token ids and, per id, its virtual index (-1 for a real token).
        A slot's ids are placeholders (0) the injector replaces with virtual vectors."""
        ids: list[int] = []
        virtual: list[int] = []
        for kind, value in pieces:
            if kind == "slot":
                size = self._size_of(int(value))
                ids += [0] * size
                virtual += list(range(int(value), int(value) + size))
            elif str(value).strip():  # whitespace alone beside a slot is not a token
                new = tokenizer(str(value), add_special_tokens=False)["input_ids"]
                ids += new
                virtual += [-1] * len(new)
        return ids, virtual

    def head_and_glue(self) -> tuple[list[Piece], str]:
        """The head with the whitespace at its end moved off (it goes onto the text)."""
        head = list(self.head)
        glue = ""
        if head and head[-1][0] == "text":
            literal = str(head[-1][1])
            stripped = literal.rstrip()
            glue = literal[len(stripped) :]
            head[-1] = ("text", stripped)
            head = [(k, v) for k, v in head if k == "slot" or v != ""]
        return head, glue

    def encode_row(
        self, tokenizer, text: str, max_text_tokens: int, *, include_head: bool = True
    ) -> tuple[list[int], list[int]]:
        """The filled template (no special tokens), text cut to a budget: (ids, virtual).

        A negative budget keeps the text's last -`max_text_tokens` tokens instead of its
        first (a conversation keeps its latest turns and the assistant's header).
        `include_head=False` leaves out everything before `{text}` (a causal decoder runs
        that part once per step as its prompt prefix, see `TemplatedTask.frame`)."""
        head, glue = self.head_and_glue()
        body = tokenizer(glue + text, add_special_tokens=False)["input_ids"]
        body = body[max_text_tokens:] if max_text_tokens < 0 else body[:max_text_tokens]
        ids, virtual = self.encode_pieces(tokenizer, head) if include_head else ([], [])
        tail_ids, tail_virtual = self.encode_pieces(tokenizer, self.tail)
        return ids + body + tail_ids, virtual + [-1] * len(body) + tail_virtual

    def encode(self, tokenizer, text: str, max_text_tokens: int) -> list[int]:
        """Token ids of the filled template (no special tokens), text cut to a budget."""
        return self.encode_row(tokenizer, text, max_text_tokens)[0]

    def pieces(self, text: str) -> tuple[str, str, str]:
        """(prefix, text with its leading whitespace, suffix) of a slot-free template."""
        prefix, suffix = self.template.split(SLOT)
        stripped = prefix.rstrip()
        return stripped, prefix[len(stripped) :] + text, suffix
