"""Smoke tests on the real built-in backbones and datasets (a handful of steps each)."""

from __future__ import annotations

import math

import pytest
import torch

from softprompt.api import build_model, load_data
from softprompt.backbones import load_backbone
from softprompt.config import DataConfig
from softprompt.data import Dataset
from softprompt.model import PromptModel
from softprompt.tasks.classification import HeadTask, VerbalizerTask
from softprompt.train import TrainConfig, train

pytestmark = pytest.mark.slow


def _small(dataset: Dataset, train_rows: int, validation_rows: int) -> Dataset:
    return Dataset(
        name=dataset.name,
        task=dataset.task,
        labels=list(dataset.labels),
        train=dataset.train[:train_rows],
        validation=dataset.validation[:validation_rows],
        test=dataset.test[:validation_rows],
    )


def _balanced(examples, labels, per_label):
    return [e for label in labels for e in [x for x in examples if x.label == label][:per_label]]


def _backbone_snapshot(backbone) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in backbone.model.state_dict().items()}


def _assert_backbone_unchanged(backbone, before) -> None:
    after = backbone.model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_minilm_soft_prompt_and_linear_head(tmp_path):
    backbone = load_backbone("minilm-l6")
    data = _small(load_data(DataConfig(source="election-tweets")), 16, 8)
    model = build_model(backbone, data, {"name": "soft-prompt", "n_tokens": 4}, {})
    assert isinstance(model.task, HeadTask)
    assert {k.split(".")[0] for k in model.state_dict()} == {"method", "task"}
    before = _backbone_snapshot(backbone)
    trainable_before = {k: v.clone() for k, v in model.state_dict().items()}

    config = TrainConfig(
        steps=3, batch_size=4, eval_every=3, eval_examples=8, warmup_steps=0, lr=0.05
    )
    result = train(model, data, config, tmp_path, progress=False)

    losses = [h["loss"] for h in result.history]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    _assert_backbone_unchanged(backbone, before)
    for key, value in model.state_dict().items():
        assert not torch.equal(value, trainable_before[key]), key
    loaded = PromptModel.load(result.prompt_path, backbone)
    assert loaded.task.config.labels == ["HillaryClinton", "realDonaldTrump"]


@pytest.fixture(scope="module")
def smollm2():
    return load_backbone("smollm2-135m")


@pytest.fixture(scope="module")
def movies() -> Dataset:
    return load_data(DataConfig(source="movie-sentiment"))


def test_smollm2_zero_shot_verbalizer_is_sensible(smollm2, movies):
    model = build_model(smollm2, movies, {"name": "none"}, {})
    assert isinstance(model.task, VerbalizerTask) and model.task.single_token
    assert model.num_trainable() == 0
    examples = _balanced(movies.test, movies.labels, 4)
    predictions = model.predict([e.text for e in examples])
    for p in predictions:
        assert set(p["scores"]) == {"negative", "positive"}
        assert all(0 <= v <= 1 for v in p["scores"].values())
        assert abs(sum(p["scores"].values()) - 1) < 1e-5
    # better than chance, and the positive class gets clearly more mass on positive reviews
    # (the template/verbalizer preset; SmolLM2 leans positive on subtle negatives)
    pairs = list(zip(predictions, examples, strict=True))
    assert sum(p["label"] == e.label for p, e in pairs) >= 5, predictions
    p_pos = {
        label: [p["scores"]["positive"] for p, e in pairs if e.label == label]
        for label in movies.labels
    }
    assert sum(p_pos["positive"]) / 4 > sum(p_pos["negative"]) / 4 + 0.15
    ranked = sorted(pairs, key=lambda pe: pe[0]["scores"]["positive"])
    assert ranked[0][1].label == "negative" and ranked[-1][1].label == "positive"


def test_smollm2_two_training_steps(smollm2, movies, tmp_path):
    data = Dataset(
        name=movies.name,
        task=movies.task,
        labels=list(movies.labels),
        train=_balanced(movies.train, movies.labels, 4),
        validation=_balanced(movies.validation, movies.labels, 2),
        test=[],
    )
    model = build_model(smollm2, data, {"name": "soft-prompt", "n_tokens": 4, "init": "labels"}, {})
    start = model.method.embeddings.detach().clone()
    config = TrainConfig(
        steps=2, batch_size=2, eval_every=2, eval_examples=4, warmup_steps=0, lr=0.01
    )
    result = train(model, data, config, tmp_path, progress=False)
    assert result.best_step == 2
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert not torch.equal(model.method.embeddings.detach(), start)
    loaded = PromptModel.load(result.prompt_path, smollm2)
    assert torch.equal(loaded.method.embeddings, model.method.embeddings)


def test_smollm2_mixed_tasks_equal_each_task_alone():
    """Two tasks, two methods, one batch on the real SmolLM2: each task's scores equal its
    own forward (fp32, the per-row prefix masks and position offsets on real weights)."""
    from softprompt.model import MultiTaskModel

    backbone = load_backbone("smollm2-135m")
    movie = _small(load_data(DataConfig(source="movie-sentiment")), 8, 4)
    tweets = _small(load_data(DataConfig(source="election-tweets")), 8, 4)
    model = MultiTaskModel(
        {
            "movie": build_model(backbone, movie, {"name": "soft-prompt", "n_tokens": 5}, {}),
            "tweets": build_model(backbone, tweets, {"name": "prefix-tuning", "n_tokens": 3}, {}),
        }
    )
    items = [("movie", e) for e in movie.test] + [("tweets", e) for e in tweets.test]
    items = items[::2] + items[1::2]  # interleave the tasks
    with torch.no_grad():
        batch = model.collate(items)
        out = model(batch)
        for task, part in batch.parts:
            alone = model.models[task](part).scores
            torch.testing.assert_close(out.outputs[task].scores, alone, atol=1e-4, rtol=0)


def test_the_multitask_example_config_trains_without_spikes(tmp_path, monkeypatch):
    """configs/multitask.yaml as shipped (8 of its steps): both prompt files are written
    and no step's summed loss spikes (the MLP prefix at lr 0.03 reached 12-24 by step
    8-10; these settings stayed under 2.0 over 30 steps at train.seed 0 and 1)."""
    import json
    from pathlib import Path

    from softprompt import cli

    config = Path(__file__).resolve().parents[2] / "configs" / "multitask.yaml"
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--config", str(config), "--steps", "8", "--eval-every", "8",
            "--test-limit", "16", "--no-baseline", "--out", "run"]  # fmt: skip
    assert cli.main(argv) == 0
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert max(losses) < 8.0, losses
    assert (tmp_path / "run" / "movie" / "prompt.safetensors").is_file()
    assert (tmp_path / "run" / "tweets" / "prompt.safetensors").is_file()
