"""`--resume` checks the validation rows too (issue 17): the best prompt is picked by
comparing validation scores across the resume, so a changed validation set is another run.
Checkpoints written before the check existed still load, with a note of what was not checked."""

from __future__ import annotations

import dataclasses
import json

import pytest
from safetensors.torch import load_file, save_file

from softprompt.data import Example
from softprompt.errors import ConfigError, PromptFileError
from softprompt.train import train
from softprompt.train.loop import CHECKPOINT_FILE


def _flipped(examples: list[Example]) -> list[Example]:
    other = {"negative": "positive", "positive": "negative"}
    return [Example(e.text, other[e.label]) for e in examples]


def _interrupted(make_model, llama, dataset, config, out) -> None:
    train(make_model(llama), dataset, config, out, progress=False, stop_after=2)


def test_resume_with_changed_validation_rows_is_refused(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    config = fast_config(steps=4, eval_every=2)
    _interrupted(make_model, llama, toy_dataset, config, tmp_path)
    flipped = dataclasses.replace(toy_dataset, validation=_flipped(toy_dataset.validation))
    with pytest.raises(ConfigError, match=r"data\.validation_rows: checkpoint '\w+', now '\w+'"):
        train(make_model(llama), flipped, config, tmp_path, progress=False, resume=True)
    forced = fast_config(steps=4, eval_every=2, force_resume=True)
    result = train(make_model(llama), flipped, forced, tmp_path, progress=False, resume=True)
    assert result.steps_done == 4


def test_resume_with_unchanged_validation_rows_goes_on(
    make_model, llama, toy_dataset, fast_config, tmp_path, capsys
):
    config = fast_config(steps=4, eval_every=2)
    _interrupted(make_model, llama, toy_dataset, config, tmp_path)
    result = train(make_model(llama), toy_dataset, config, tmp_path, progress=False, resume=True)
    assert result.steps_done == 4
    assert "could not be checked" not in capsys.readouterr().err


def _as_older_checkpoint(path) -> None:
    """Rewrite a checkpoint as an older softprompt wrote it: no validation fingerprint."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        metadata = json.loads(handle.read(size))["__metadata__"]
    header = json.loads(metadata["checkpoint"])
    assert "validation_rows" in header["config"]["data"]
    del header["config"]["data"]["validation_rows"]
    save_file(load_file(path), path, metadata={"checkpoint": json.dumps(header)})


def test_older_checkpoint_without_the_fingerprint_resumes_and_says_so(
    make_model, llama, toy_dataset, fast_config, tmp_path, capsys
):
    config = fast_config(steps=4, eval_every=2)
    _interrupted(make_model, llama, toy_dataset, config, tmp_path)
    _as_older_checkpoint(tmp_path / CHECKPOINT_FILE)
    result = train(make_model(llama), toy_dataset, config, tmp_path, progress=False, resume=True)
    assert result.steps_done == 4
    err = capsys.readouterr().err
    assert "data.validation_rows" in err and "could not be checked" in err


def test_checkpoint_with_a_deeply_nested_header_is_one_error(
    make_model, llama, toy_dataset, fast_config, tmp_path
):
    config = fast_config(steps=4, eval_every=2)
    _interrupted(make_model, llama, toy_dataset, config, tmp_path)
    path = tmp_path / CHECKPOINT_FILE
    deep = '{"state": ' + "[" * 100_000 + "]" * 100_000 + "}"
    save_file(load_file(path), path, metadata={"checkpoint": deep})
    with pytest.raises(PromptFileError, match="checkpoint unreadable .*nested too deeply"):
        train(make_model(llama), toy_dataset, config, tmp_path, progress=False, resume=True)
