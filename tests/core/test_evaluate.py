"""Metrics are pure functions of counts; an empty split is an error, not a score of 0."""

from __future__ import annotations

import pytest
import torch

from softprompt.data import Dataset
from softprompt.errors import DataError
from softprompt.evaluate import class_counts, evaluate, metrics_from_counts
from softprompt.train import train


def test_metrics_from_counts_match_hand_computed_values():
    predictions = torch.tensor([0, 0, 1, 1, 1])
    targets = torch.tensor([0, 1, 1, 1, 0])
    metrics = metrics_from_counts(class_counts(predictions, targets, 2), rows=5)
    # class 0: tp 1, predicted 2, gold 2 -> F1 0.5; class 1: tp 2, predicted 3, gold 3 -> 2/3
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_macro_f1_ignores_classes_absent_from_gold_and_predictions():
    """As scikit-learn: one correct row of class 0 out of three classes is a perfect score."""
    counts = class_counts(torch.tensor([0]), torch.tensor([0]), 3)
    assert metrics_from_counts(counts, rows=1) == {"accuracy": 1.0, "macro_f1": 1.0}
    # a class that is predicted but never gold still counts (its F1 is 0)
    counts = class_counts(torch.tensor([0, 2]), torch.tensor([0, 0]), 3)
    assert metrics_from_counts(counts, rows=2)["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)


def test_evaluating_no_rows_is_an_error(make_model, llama):
    with pytest.raises(DataError, match="nothing to evaluate"):
        evaluate(make_model(llama), [])


def test_training_with_an_empty_validation_split_fails_before_training(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    empty = Dataset(
        "toy", "classification", toy_dataset.labels, toy_dataset.train, [], toy_dataset.test
    )
    model = make_model(llama)
    before = model.method.embeddings.detach().clone()
    with pytest.raises(DataError, match="validation"):
        train(model, empty, fast_config(), tmp_path, progress=False)
    assert torch.equal(model.method.embeddings, before)
