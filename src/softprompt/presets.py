"""Task framing for the built-in datasets: templates and label words that read
naturally to a pretrained LM, so zero-shot already works and tuning starts well."""

from __future__ import annotations

from typing import Any

DATASET_TASKS: dict[str, dict[str, Any]] = {
    "movie-sentiment": {
        "template": "Review: {text}\nSentiment:",
        "verbalizer": {"negative": [" negative"], "positive": [" positive"]},
    },
    "product-sentiment": {
        "template": "Review: {text}\nSentiment:",
        "verbalizer": {"negative": [" negative"], "positive": [" positive"]},
    },
    "tweet-sentiment": {
        "template": "Tweet: {text}\nSentiment:",
        "verbalizer": {"negative": [" negative"], "positive": [" positive"]},
    },
    "editorial-sentiment": {
        "template": "Sentence: {text}\nSentiment:",
        "verbalizer": {"negative": [" negative"], "positive": [" positive"]},
    },
    "election-tweets": {
        "template": "Tweet: {text}\nThis tweet was written by",
        "verbalizer": {"HillaryClinton": [" Hillary"], "realDonaldTrump": [" Trump"]},
    },
    "newsgroups20": {
        "template": "Message: {text}\nNewsgroup:",
        "max_text_tokens": 160,
    },
}


def task_defaults(dataset: str) -> dict[str, Any]:
    return dict(DATASET_TASKS.get(dataset, {}))
