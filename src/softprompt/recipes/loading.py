"""A run's data from its `data` config: the one place a recipe turns a DataConfig into a
Dataset (a user file's splits, a built-in, a k-shot sample), below the run and compare
recipes that both need it."""

from __future__ import annotations

from softprompt.config import DataConfig
from softprompt.data import Dataset, load_dataset
from softprompt.data.shots import few_shot_dataset


def load_data(config: DataConfig, seed: int = 0) -> Dataset:
    """The run's dataset; with `data.shots`, its k-shot sample (data/shots.py)."""
    dataset = load_dataset(
        config.source,
        text_column=config.text_column,
        label_column=config.label_column,
        task=config.task,
        labels=config.labels,
        validation=config.validation,
        test=config.test,
        seed=seed,
    )
    return few_shot_dataset(dataset, config.shots, config.seed)
