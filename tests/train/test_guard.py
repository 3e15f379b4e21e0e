"""A diverging run stops with the step, the lr and what to do, and never keeps garbage:
exploding and non-finite losses are caught, non-finite tensors are never saved or loaded.
(Issue 11, case 3.)"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save as st_save

from softprompt import cli
from softprompt.errors import ConfigError, PromptFileError, TrainingError
from softprompt.model import PromptModel
from softprompt.promptfile import FORMAT, file_checksum, read_prompt_file, save_prompt_file
from softprompt.train import TrainConfig, guard, train
from softprompt.train.checkpoint import save_checkpoint
from softprompt.train.loop import CHECKPOINT_FILE, PROMPT_FILE


def test_lr_1e6_explodes_and_stops_before_keeping_a_prompt(
    make_model, bert, toy_dataset, fast_config, tmp_path
):
    """The issue's case: the loss went 0.69 -> 9.6e8 with no warning, kept as "best"."""
    model = make_model(bert)  # linear head, as minilm-l6 gets
    config = fast_config(steps=12, eval_every=4, lr=1e6)
    with pytest.raises(TrainingError) as info:
        train(model, toy_dataset, config, tmp_path, progress=False)
    message = str(info.value)
    assert message.startswith("training diverged at step ")
    assert "smoothed loss" in message and "train.divergence_factor" in message
    assert "Lower train.lr (now 1000000.0)" in message and "--overwrite" in message
    assert not (tmp_path / PROMPT_FILE).exists()


def test_lr_1e6_on_the_cli_is_one_line_and_exit_2(capsys, tmp_path, bert_folder):
    csv = tmp_path / "d.csv"
    csv.write_text(
        "text,label\n"
        + "".join(f"good fun {i},positive\nbad dull {i},negative\n" for i in range(20))
    )
    argv = ["train", "--backbone", str(bert_folder), "--dataset", str(csv), "--n-tokens", "2",
            "--steps", "12", "--eval-every", "6", "--batch-size", "4", "--lr", "1e6",
            "--no-baseline", "--out", str(tmp_path / "run")]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "training diverged at step" in err.splitlines()[-1]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_non_finite_lr_is_refused_by_name(capsys, value):
    assert cli.main(["train", f"--lr={value}"]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and "finite" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="train.lr"):
        TrainConfig(lr=float(value))


def test_ordinary_noise_never_trips_the_guard(tmp_path):
    config = TrainConfig()
    state: dict = {}
    params = [torch.nn.Parameter(torch.zeros(2))]
    for step, loss in enumerate([0.7, 3.0, 0.2, 5.0, 0.1, 4.0, 0.9, 2.5] * 10):
        guard.after_step(state, loss, step, params, config, tmp_path / "p")
    assert state["loss_reference"] == 0.7 and state["loss_smoothed"] < 10


def test_a_slow_climb_trips_the_guard_relative_to_the_first_loss(tmp_path):
    config = TrainConfig(divergence_factor=5)
    state: dict = {}
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(TrainingError, match=r"passed 5 x the first step's loss 2") as info:
        for step in range(200):
            guard.after_step(state, 2.0 * 1.1**step, step, params, config, tmp_path / "p")
    assert "no prompt was saved yet" in str(info.value)


def test_non_finite_tensors_after_an_update_stop_the_run(
    make_model, llama, toy_dataset, fast_config, tmp_path, monkeypatch
):
    """A finite loss can still leave NaN in the prompt (an inf lr, an overflowing moment)."""
    model = make_model(llama)
    original = torch.optim.AdamW.step

    def poisoned_step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if self.state and max(s["step"] for s in self.state.values()) >= 3:
            with torch.no_grad():
                model.method.embeddings[0, 0] = float("nan")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned_step)
    with pytest.raises(TrainingError, match="hold NaN/inf after the update") as info:
        train(model, toy_dataset, fast_config(steps=6, eval_every=2), tmp_path, progress=False)
    assert "step 3 " in str(info.value) and str(tmp_path / PROMPT_FILE) in str(info.value)
    kept = PromptModel.load(tmp_path / PROMPT_FILE, llama)  # the step-2 prompt, finite
    assert torch.isfinite(kept.method.embeddings).all()


def test_a_non_finite_or_exploded_validation_loss_is_never_kept(
    make_model, llama, toy_dataset, fast_config, tmp_path, monkeypatch
):
    import softprompt.train.loop as loop

    real = loop.evaluate
    losses = iter([0.5, math.nan])

    def fake_evaluate(*args, **kwargs):
        return {**real(*args, **kwargs), "loss": next(losses)}

    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    with pytest.raises(TrainingError, match="validation loss is nan"):
        train(
            make_model(llama),
            toy_dataset,
            fast_config(steps=4, eval_every=2),
            tmp_path,
            progress=False,
        )
    from softprompt.model import load_prompt_meta

    assert load_prompt_meta(tmp_path / PROMPT_FILE)["metrics"]["step"] == 2
    losses = iter([1e9])
    with pytest.raises(TrainingError, match="validation loss 1e\\+09 passed 10 x"):
        train(
            make_model(llama), toy_dataset, fast_config(steps=2, eval_every=2, overwrite=True),
            tmp_path, progress=False,
        )  # fmt: skip
    assert not (tmp_path / PROMPT_FILE).exists()


def test_guard_state_survives_resume(make_model, llama, toy_dataset, fast_config, tmp_path):
    config = fast_config(steps=4, eval_every=2)
    train(make_model(llama), toy_dataset, config, tmp_path, progress=False, stop_after=2)
    from softprompt.train.checkpoint import _read

    state = _read(tmp_path / CHECKPOINT_FILE)[1]["state"]
    assert math.isfinite(state["loss_reference"]) and math.isfinite(state["loss_smoothed"])


# --- non-finite tensors are never written, never read -------------------------------------


def _nan_tensors() -> dict[str, torch.Tensor]:
    embeddings = torch.zeros(5, 32)
    embeddings[1, 2] = float("nan")
    return {"method.embeddings": embeddings}


def test_save_prompt_file_refuses_non_finite(make_model, llama, tmp_path):
    meta = make_model(llama, n_tokens=5).describe()
    with pytest.raises(PromptFileError, match="method.embeddings hold NaN/inf"):
        save_prompt_file(tmp_path / "p.safetensors", _nan_tensors(), meta)
    assert not (tmp_path / "p.safetensors").exists()


def test_checkpoint_refuses_non_finite(make_model, llama, tmp_path):
    model = make_model(llama, n_tokens=5)
    optimizer = torch.optim.AdamW(model.parameters())
    with torch.no_grad():
        model.method.embeddings[0, 0] = float("inf")
    with pytest.raises(PromptFileError, match="NaN/inf"):
        save_checkpoint(tmp_path / CHECKPOINT_FILE, model, optimizer, {"step": 1})
    assert not (tmp_path / CHECKPOINT_FILE).exists()


def test_a_file_holding_non_finite_tensors_is_refused_on_load(make_model, llama, tmp_path, capsys):
    """Written by hand (or by an older version): a valid checksum does not make NaN usable."""
    header = dict(make_model(llama, n_tokens=5).describe(), format=FORMAT)
    tensors = _nan_tensors()
    header["sha256"] = file_checksum(header, tensors)
    path = tmp_path / "nan.safetensors"
    path.write_bytes(st_save(tensors, metadata={"softprompt": json.dumps(header)}))
    with pytest.raises(PromptFileError, match="NaN/inf"):
        read_prompt_file(path)
    assert cli.main(["predict", str(path), "a good film"]) == 2
    assert "NaN/inf" in capsys.readouterr().err
