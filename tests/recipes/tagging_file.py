"""A small CoNLL tagging file that the compare tests train tagging heads on."""

from __future__ import annotations

from pathlib import Path


def write_conll(path: Path, count: int = 40) -> Path:
    """`count` four-word sentences (two patterns with team and film entities), then a
    numbered `O` token each, so no two sentences are the same row."""
    sentences = [
        [("the", "O"), ("red", "B-team"), ("sox", "I-team"), ("won", "O")],
        [("we", "O"), ("saw", "O"), ("jaws", "B-film"), ("again", "O")],
    ]
    lines = []
    for i in range(count):
        lines += [f"{w}\t{t}" for w, t in sentences[i % 2]] + [f"n{i}\tO", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
