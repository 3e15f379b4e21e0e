"""Task framing for the built-in datasets: templates and label words that read
naturally to a pretrained LM, so zero-shot already works and tuning starts well;
`task_config_for` puts a user's overrides on top."""

from __future__ import annotations

from typing import Any

from softprompt.data import Dataset
from softprompt.errors import ConfigError
from softprompt.tasks.base import TaskConfig

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
    "e2e-nlg": {  # Li & Liang's prefix-tuning format: table, separator, text
        "template": "Table: {text}\nDescription:\n",
        "max_new_tokens": 64,
    },
    "newsgroups20": {
        "template": "Message: {text}\nNewsgroup:",
        "max_text_tokens": 160,
    },
}


def task_defaults(dataset: str) -> dict[str, Any]:
    return dict(DATASET_TASKS.get(dataset, {}))


def task_config_for(dataset: Dataset, overrides: dict[str, Any]) -> TaskConfig:
    """Built-in framing for the dataset, then the user's overrides on top."""
    values = {
        "kind": dataset.task,
        "labels": list(dataset.labels),
        **task_defaults(dataset.name),
        **overrides,
    }
    missing = sorted(set(dataset.labels) - set(values["labels"]))
    if dataset.task == "classification" and missing:
        raise ConfigError(
            f"task.labels: dataset {dataset.name!r} has labels {missing} that task.labels "
            f"{values['labels']} lacks; list every label of the data (or leave task.labels out)"
        )
    return TaskConfig(**values)
