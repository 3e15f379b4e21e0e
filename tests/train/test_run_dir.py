"""The run-folder rules hold for the Python API too, not only the CLI (issue 11, cases 1, 2, 4)."""

from __future__ import annotations

import dataclasses

import pytest

from softprompt.data import Dataset
from softprompt.errors import ConfigError
from softprompt.promptfile import read_prompt_file
from softprompt.train import run_dir, train
from softprompt.train.loop import PROMPT_FILE


def test_train_twice_into_one_folder_refuses_then_overwrites(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    first = train(make_model(llama), toy_dataset, fast_config(), tmp_path, progress=False)
    kept = read_prompt_file(first.prompt_path)[0]["method.embeddings"].clone()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(make_model(llama), toy_dataset, fast_config(lr=0.3), tmp_path, progress=False)
    assert read_prompt_file(tmp_path / PROMPT_FILE)[0]["method.embeddings"].equal(kept)
    train(
        make_model(llama),
        toy_dataset,
        fast_config(lr=0.3, overwrite=True),
        tmp_path,
        progress=False,
    )
    assert not read_prompt_file(tmp_path / PROMPT_FILE)[0]["method.embeddings"].equal(kept)


def test_resume_with_changed_training_rows_is_refused(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    config = fast_config(steps=4, eval_every=2)
    train(make_model(llama), toy_dataset, config, tmp_path, progress=False, stop_after=2)
    other = dataclasses.replace(toy_dataset, train=toy_dataset.train[:-4])
    assert isinstance(other, Dataset)
    with pytest.raises(ConfigError, match=r"data\.train_rows"):
        train(make_model(llama), other, config, tmp_path, progress=False, resume=True)
    train(make_model(llama), toy_dataset, config, tmp_path, progress=False, resume=True)


def test_force_resume_accepts_a_changed_lr(make_model, llama, toy_dataset, fast_config, tmp_path):
    train(
        make_model(llama), toy_dataset, fast_config(steps=4), tmp_path, progress=False, stop_after=2
    )
    with pytest.raises(ConfigError, match="train.lr: checkpoint 0.1, now 0.05"):
        train(
            make_model(llama),
            toy_dataset,
            fast_config(steps=4, lr=0.05),
            tmp_path,
            progress=False,
            resume=True,
        )
    result = train(
        make_model(llama), toy_dataset, fast_config(steps=4, lr=0.05, force_resume=True),
        tmp_path, progress=False, resume=True,
    )  # fmt: skip
    assert result.steps_done == 4


def test_config_differences_name_nested_keys():
    stored = {"train": {"lr": 0.1, "seed": 0}, "method": {"options": {"n_tokens": 4}}}
    current = {"train": {"lr": 0.1, "seed": 1}, "method": {"options": {"n_tokens": 4, "x": 1}}}
    assert run_dir.config_differences(stored, current) == [
        "method.options.x: checkpoint '(absent)', now 1",
        "train.seed: checkpoint 0, now 1",
    ]
    from softprompt.train import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}  # what a resume may change
    assert run_dir.SAFE_TO_CHANGE <= names
    assert {"lr", "seed", "batch_size", "grad_accum", "warmup_steps", "schedule"} <= (
        names - run_dir.SAFE_TO_CHANGE
    )


def test_lock_is_reentrant_in_one_process_and_released(tmp_path):
    with run_dir.lock(tmp_path):
        with run_dir.lock(tmp_path):  # api.run holds it, then train takes it again
            pass
        assert run_dir._held  # still held by the outer claim
    assert not run_dir._held
