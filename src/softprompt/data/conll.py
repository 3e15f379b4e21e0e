"""CoNLL-format sequence labelling files: one token per line, its BIO tag last.

Both layouts users bring are read: `token<TAB>tag` (WNUT) and whitespace-separated
columns with the tag last (`EU NNP B-NP B-ORG`, CoNLL-2003). A blank line ends a
sentence; `-DOCSTART-` lines are skipped. Each sentence becomes one Example whose text
is the words and whose label is the tags, each joined by single spaces, which is what
the `tagging` task reads.
"""

from __future__ import annotations

import re
from pathlib import Path

from softprompt.data.files import Row, read_text
from softprompt.data.records import Example
from softprompt.errors import DataError

CONLL_EXTENSIONS = (".conll", ".bio", ".iob")
_TAG = re.compile(r"^(O|[BI]-\S+)$")


def read_conll(path: str | Path) -> list[Example]:
    """Sentences of a CoNLL file as Examples (words and tags joined by spaces)."""
    return [Example(row.text, row.label) for row in read_conll_rows(path)]


def read_conll_rows(path: str | Path) -> list[Row]:
    """Sentences as Rows (line = the sentence's first line), checked as they are read."""
    path = Path(path)
    rows: list[Row] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    for number, line in enumerate(read_text(path).splitlines(), 1):
        fields = line.split("\t") if "\t" in line else line.split()
        if not line.strip() or fields[0] == "-DOCSTART-":
            if words:
                rows.append(Row(start, " ".join(words), " ".join(tags)))
            words, tags = [], []
            continue
        word, tag = _token(path, number, line, fields)
        start = start if words else number
        words.append(word)
        tags.append(tag)
    if words:
        rows.append(Row(start, " ".join(words), " ".join(tags)))
    if not rows:
        raise DataError(f"{path}: no sentences (the file is empty or only blank lines)")
    return rows


def _token(path: Path, number: int, line: str, fields: list[str]) -> tuple[str, str]:
    fields = [field.strip() for field in fields]
    if len(fields) < 2 or not fields[0] or " " in fields[0]:
        raise DataError(
            f"{path}, line {number}: expected a token and its tag ('token<TAB>tag', or "
            f"whitespace-separated columns with the tag last), got {line!r}"
        )
    tag = fields[-1]
    if not _TAG.match(tag):
        raise DataError(
            f"{path}, line {number}: tag {tag!r} is not a BIO tag (O, B-TYPE or I-TYPE); "
            "convert the file to BIO tags"
        )
    return fields[0], tag


def tag_set(rows: list[Row]) -> list[str]:
    """O, then B- and I- of every entity type seen, sorted by type: the head's classes."""
    types = sorted({tag[2:] for row in rows for tag in row.label.split() if tag != "O"})
    return ["O", *(f"{prefix}-{kind}" for kind in types for prefix in ("B", "I"))]


def check_tags(path: str | Path, rows: list[Row], known: list[str], origin: str) -> None:
    """A tag the training file never shows cannot be learned: name where it is."""
    allowed = set(known)
    for row in rows:
        unknown = sorted(set(row.label.split()) - allowed)
        if unknown:
            raise DataError(
                f"{path}: sentence at line {row.line}: tags {', '.join(unknown)} never occur "
                f"in {origin}; add sentences with them to the training file or retag them"
            )
