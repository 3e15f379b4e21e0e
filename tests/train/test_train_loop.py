"""The training loop: resume replays an uninterrupted run exactly, runs are reproducible,
and a diverging loss stops training with the best prompt kept on disk."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from softprompt.errors import ConfigError, TrainingError
from softprompt.model import MultiTaskModel, PromptModel, load_prompt_meta
from softprompt.promptfile import read_prompt_file
from softprompt.train import train
from softprompt.train.loop import CHECKPOINT_FILE, PROMPT_FILE
from softprompt.train.sampler import TaskSampler


def micro_batch(rows, batch_size, seed, index):
    """The single-task order: micro-batch `index` of a one-task sampler."""
    sampler = TaskSampler({"t": rows}, batch_size=batch_size, seed=seed, micro_batches=index + 1)
    return [example for _, example in sampler.micro_batch(index)]


def reference_micro_batch(examples, batch_size, seed, index):
    """The order softprompt has always used for one dataset (epoch-wise seeded shuffles,
    last partial batch dropped), written out independently of the sampler."""
    per_epoch = max(1, len(examples) // batch_size)
    epoch, slot = divmod(index, per_epoch)
    order = torch.randperm(
        len(examples), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
    )
    return [examples[int(i)] for i in order[slot * batch_size : (slot + 1) * batch_size]]


def _tensors(model: PromptModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


RESUME_CASES = [
    ("tiny_llama", {}, 4),
    ("tiny_llama", {"grad_accum": 2, "schedule": "cosine"}, 3),  # stops between checkpoints
    ("tiny_bert", {"patience": 5}, 2),  # linear head + early-stopping state
]


@pytest.mark.parametrize("name,overrides,stop_after", RESUME_CASES)
def test_resume_equals_uninterrupted(
    make_model, backbones, toy_dataset, fast_config, tmp_path, name, overrides, stop_after
):
    backbone = backbones[name]
    config = fast_config(steps=6, eval_every=2, **overrides)

    straight = make_model(backbone)
    full = train(straight, toy_dataset, config, tmp_path / "straight", progress=False)

    first = make_model(backbone)
    partial = train(
        first, toy_dataset, config, tmp_path / "resumed", progress=False, stop_after=stop_after
    )
    assert partial.steps_done == stop_after - stop_after % 2 < 6
    assert (tmp_path / "resumed" / CHECKPOINT_FILE).is_file()
    second = make_model(backbone)  # a new process: fresh model, state from the checkpoint
    resumed = train(second, toy_dataset, config, tmp_path / "resumed", progress=False, resume=True)

    _assert_same_tensors(_tensors(second), _tensors(straight))
    _assert_same_tensors(
        read_prompt_file(resumed.prompt_path)[0], read_prompt_file(full.prompt_path)[0]
    )
    assert (resumed.best_metric, resumed.best_step, resumed.steps_done) == (
        full.best_metric,
        full.best_step,
        6,
    )
    assert resumed.history == full.history
    straight_log = (tmp_path / "straight" / "metrics.jsonl").read_text()
    assert (tmp_path / "resumed" / "metrics.jsonl").read_text() == straight_log
    assert [json.loads(line)["step"] for line in straight_log.splitlines() if '"eval"' in line] == [
        2,
        4,
        6,
    ]


def test_resume_without_checkpoint_says_there_is_nothing_to_resume(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    """Before: --resume on an empty folder started from scratch without a word."""
    from softprompt.errors import ConfigError

    with pytest.raises(ConfigError, match="nothing to resume"):
        train(
            make_model(llama),
            toy_dataset,
            fast_config(),
            tmp_path / "b",
            progress=False,
            resume=True,
        )
    assert not (tmp_path / "b" / PROMPT_FILE).exists()


def test_same_seed_same_prompt_other_seed_differs(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    runs = {}
    for label, seed in [("a", 0), ("b", 0), ("c", 1)]:
        model = make_model(llama)
        train(model, toy_dataset, fast_config(seed=seed), tmp_path / label, progress=False)
        runs[label] = _tensors(model)
    _assert_same_tensors(runs["a"], runs["b"])
    assert not torch.equal(runs["a"]["method.embeddings"], runs["c"]["method.embeddings"])
    assert read_prompt_file(tmp_path / "a" / PROMPT_FILE)[0].keys() == runs["a"].keys()


def test_micro_batches_are_a_function_of_seed_and_index(toy_dataset):
    rows = toy_dataset.train
    epoch = [micro_batch(rows, 8, seed=3, index=i) for i in range(4)]
    assert sorted(e.text for b in epoch for e in b) == sorted(
        e.text for e in rows
    )  # one epoch covers all
    assert micro_batch(rows, 8, 3, 2) == epoch[2]
    assert micro_batch(rows, 8, 4, 2) != epoch[2]
    assert [micro_batch(rows, 8, 3, 4 + i) for i in range(4)] != epoch  # next epoch reshuffles


def test_single_task_sampler_keeps_the_single_dataset_order(toy_dataset):
    rows = toy_dataset.train[:30]  # 30 rows, batch 8: 3 batches an epoch, 6 rows dropped
    for index in range(9):
        assert micro_batch(rows, 8, 5, index) == reference_micro_batch(rows, 8, 5, index)


def _nan_after(model: PromptModel, good_steps: int) -> None:
    """Make the training loss NaN after `good_steps` optimizer steps (evaluation unaffected)."""
    original = model.task.score
    calls = {"train": 0}

    def score(*args):
        out = original(*args)
        if model.training:
            calls["train"] += 1
            if calls["train"] > good_steps:
                out.loss = out.loss * float("nan")
        return out

    model.task.score = score


def test_nan_loss_stops_with_lr_hint_and_keeps_best(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    model = make_model(llama)
    _nan_after(model, good_steps=2)
    with pytest.raises(TrainingError) as info:
        train(
            model,
            toy_dataset,
            fast_config(steps=6, eval_every=2, lr=0.05),
            tmp_path,
            progress=False,
        )
    message = str(info.value)
    assert "train.lr" in message and "0.05" in message and "nan" in message
    assert str(tmp_path / PROMPT_FILE) in message
    best = PromptModel.load(tmp_path / PROMPT_FILE, llama)
    assert load_prompt_meta(tmp_path / PROMPT_FILE)["metrics"]["step"] == 2
    assert torch.isfinite(best.method.embeddings).all()


def test_huge_lr_diverges_with_training_error(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    model = make_model(llama)
    config = fast_config(steps=8, eval_every=1, lr=1e30, warmup_steps=0, schedule="constant")
    with pytest.raises(TrainingError, match=r"Lower train\.lr \(now 1e\+30\)"):
        train(model, toy_dataset, config, tmp_path, progress=False)
    meta = load_prompt_meta(tmp_path / PROMPT_FILE)
    assert meta["metrics"]["step"] >= 1
    PromptModel.load(tmp_path / PROMPT_FILE, llama)


def test_divergence_before_any_evaluation_does_not_point_to_a_missing_file(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    model = make_model(llama)
    _nan_after(model, good_steps=0)
    with pytest.raises(TrainingError) as info:
        train(model, toy_dataset, fast_config(steps=6, eval_every=2), tmp_path, progress=False)
    claims_file = "kept at" in str(info.value)
    assert not claims_file or (tmp_path / PROMPT_FILE).is_file()


def test_training_errors_for_impossible_runs(make_model, llama, toy_dataset, fast_config, tmp_path):
    with pytest.raises(TrainingError, match="fewer than train.batch_size 64"):
        train(make_model(llama), toy_dataset, fast_config(batch_size=64), tmp_path, progress=False)


def test_best_prompt_is_the_best_evaluation(make_model, llama, toy_dataset, fast_config, tmp_path):
    model = make_model(llama)
    result = train(model, toy_dataset, fast_config(steps=6, eval_every=1), tmp_path, progress=False)
    evals = [h for h in result.history if h["kind"] == "eval"]
    assert [h["step"] for h in evals] == list(range(1, 7))
    best = max(evals, key=lambda h: h["accuracy"])  # first of the maxima wins
    assert (result.best_step, result.best_metric) == (best["step"], best["accuracy"])
    meta = load_prompt_meta(result.prompt_path)
    assert meta["metrics"]["step"] == best["step"]
    assert meta["metrics"]["validation"]["accuracy"] == best["accuracy"]
    assert meta["dataset"] == "toy" and meta["train"]["steps"] == 6
    assert all(math.isfinite(h["loss"]) for h in result.history)


def test_resume_with_only_a_metrics_log_is_refused_and_keeps_it(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    log = '{"kind": "train", "step": 1, "loss": 9.0, "lr": 0.1}\n'
    (tmp_path / "metrics.jsonl").write_text(log)
    from softprompt.errors import ConfigError

    with pytest.raises(ConfigError, match="nothing to resume"):
        train(make_model(llama), toy_dataset, fast_config(), tmp_path, progress=False, resume=True)
    assert (tmp_path / "metrics.jsonl").read_text() == log


def test_resume_from_a_corrupt_checkpoint_is_a_prompt_file_error(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    from softprompt.errors import PromptFileError

    train(make_model(llama), toy_dataset, fast_config(), tmp_path, progress=False, stop_after=2)
    checkpoint = tmp_path / CHECKPOINT_FILE
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(PromptFileError, match="without --resume"):
        train(make_model(llama), toy_dataset, fast_config(), tmp_path, progress=False, resume=True)


def test_resume_with_a_changed_method_is_a_clear_error(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    from softprompt.errors import SoftPromptError

    train(
        make_model(llama, n_tokens=4),
        toy_dataset,
        fast_config(),
        tmp_path,
        progress=False,
        stop_after=2,
    )
    with pytest.raises(SoftPromptError, match="--resume"):
        train(
            make_model(llama, n_tokens=5),
            toy_dataset,
            fast_config(),
            tmp_path,
            progress=False,
            resume=True,
        )


def test_generation_training_keeps_the_lowest_validation_loss(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    from softprompt.data import Dataset, Example

    def as_generation(rows):
        return [Example(e.text, "it was " + e.label) for e in rows]

    data = Dataset(
        "gen",
        "generation",
        [],
        as_generation(toy_dataset.train),
        as_generation(toy_dataset.validation),
        [],
    )
    model = make_model(llama, task={"kind": "generation", "labels": []}, n_tokens=2)
    result = train(
        model, data, fast_config(steps=4, eval_every=1, lr=0.3), tmp_path, progress=False
    )
    evals = [h for h in result.history if h["kind"] == "eval"]
    assert all("accuracy" not in h for h in evals)
    best = min(evals, key=lambda h: h["loss"])
    assert (result.best_step, result.best_metric) == (best["step"], -best["loss"])
    assert evals[-1]["loss"] < evals[0]["loss"]  # the target text is easy to learn
    loaded = PromptModel.load(result.prompt_path, llama)
    assert loaded.task.config.kind == "generation"


def test_logged_train_accuracy_is_the_steps_own_batch(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    """The accuracy logged for step 1 is the initial prompt's accuracy on step 1's rows."""
    config = fast_config(steps=2, eval_every=2, grad_accum=2)
    model = make_model(llama)
    rows = [*micro_batch(toy_dataset.train, config.batch_size, config.seed, 0)]
    rows += micro_batch(toy_dataset.train, config.batch_size, config.seed, 1)
    with torch.no_grad():
        out = model(model.collate(rows))
    expected = float((out.scores.argmax(-1) == out.targets).float().mean())
    result = train(model, toy_dataset, config, tmp_path, progress=False)
    steps = [h for h in result.history if h["kind"] == "train"]
    assert steps[0]["accuracy"] == pytest.approx(expected)
    assert all(0.0 <= h["accuracy"] <= 1.0 for h in steps)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h for h in logged if h["kind"] == "train"] == steps


def test_generation_steps_log_no_accuracy(make_model, llama, fast_config, tmp_path):
    from softprompt.data import Dataset, Example

    pairs = [Example(f"say {w}", f" {w}") for w in ("yes", "no", "maybe", "sure") * 4]
    dataset = Dataset("echo", "generation", [], pairs, pairs[:4], pairs[:4])
    model = make_model(llama, task={"kind": "generation", "labels": [], "max_new_tokens": 2})
    result = train(model, dataset, fast_config(steps=2, eval_every=2), tmp_path, progress=False)
    assert all("accuracy" not in h for h in result.history if h["kind"] == "train")


def test_a_dataset_named_like_a_module_attribute_trains_and_resumes(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    """A user's train.csv makes a task named "train", which nn.ModuleDict refused with
    KeyError("attribute 'train' already exists"); it trains and resumes from its
    checkpoint, and a task named "task-train" beside it is refused."""
    data = dataclasses.replace(toy_dataset, name="train")
    config = fast_config(steps=4, eval_every=2)
    out = tmp_path / "run"
    train(make_model(llama), data, config, out, progress=False, stop_after=2)
    result = train(make_model(llama), data, config, out, progress=False, resume=True)
    assert result.steps_done == 4 and result.prompt_path.is_file()
    assert PromptModel.load(result.prompt_path, llama).num_trainable() > 0
    models = {"train": make_model(llama), "keys": make_model(llama)}
    multi = MultiTaskModel(models)
    assert list(multi.models) == ["train", "keys"] and multi.models["keys"] is models["keys"]
    with pytest.raises(ConfigError, match="'train' and 'task-train'"):
        MultiTaskModel({"task-train": make_model(llama), "train": make_model(llama)})
