"""`train.head_lr`: a task head trained beside a prompt (or LoRA, or the backbone) gets its
own lr, on the same warmup and decay (issue 22: with one lr a head beside LoRA moved at
LoRA's 1e-3 and a wnut16 tagger reached entity F1 0). Without it the optimizer keeps one
group, so checkpoints written before the option resume unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt import cli
from softprompt.errors import ConfigError
from softprompt.model import MultiTaskModel
from softprompt.train import TrainConfig, train
from softprompt.train.checkpoint import checkpoint_config
from softprompt.train.loop import CHECKPOINT_FILE, optimizer_groups

ONE_STEP = {"steps": 1, "eval_every": 1, "warmup_steps": 0, "schedule": "constant"}


def _largest_change(model, before: dict[str, torch.Tensor], head: bool) -> float:
    heads = {id(p) for p in model.head_parameters()}
    changes = [
        (p.detach() - before[name]).abs().max().item()
        for name, p in model.named_parameters()
        if p.requires_grad and (id(p) in heads) == head
    ]
    return max(changes)


@pytest.mark.parametrize(("lr", "head_lr"), [(1e-3, 1e-2), (3e-2, 1e-3), (1e-2, None)])
def test_one_adam_step_moves_the_head_by_head_lr_and_the_prompt_by_lr(
    make_model, bert, toy_dataset, fast_config, tmp_path, lr, head_lr
):
    model = make_model(bert)  # an encoder: a linear head beside the soft prompt
    assert model.head_parameters() and len(model.head_parameters()) < len(
        model.trainable_parameters()
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = fast_config(lr=lr, head_lr=head_lr, weight_decay=0.0, **ONE_STEP)
    train(model, toy_dataset, config, tmp_path / "run", progress=False)
    # Adam's first step moves every element with a gradient by about its lr
    assert _largest_change(model, before, head=True) == pytest.approx(head_lr or lr, rel=1e-3)
    assert _largest_change(model, before, head=False) == pytest.approx(lr, rel=1e-3)
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["lr"] == lr and log[0].get("head_lr") == head_lr


def test_head_lr_follows_the_warmup_and_decay():
    config = TrainConfig(steps=10, warmup_steps=2, lr=0.1, head_lr=0.01)
    for step in range(10):
        assert config.head_lr_at(step) == pytest.approx(config.lr_at(step) / 10)
    assert TrainConfig(lr=0.1).head_lr_at(3) == TrainConfig(lr=0.1).lr_at(3)


def test_one_optimizer_group_unless_a_head_trains_beside_something_else(
    make_model, bert, llama, fast_config
):
    with_head = MultiTaskModel.single("t", make_model(bert))
    assert len(optimizer_groups(with_head, fast_config())) == 1  # head_lr None: as before
    groups = optimizer_groups(with_head, fast_config(head_lr=0.5))
    assert [g.get("head", False) for g in groups] == [False, True] and groups[1]["lr"] == 0.5
    probe = MultiTaskModel.single("t", make_model(bert, method="none"))  # the head alone
    assert len(optimizer_groups(probe, fast_config(head_lr=0.5))) == 1
    verbalizer = MultiTaskModel.single("t", make_model(llama))  # no head on a causal LM
    assert not verbalizer.head_parameters()
    assert len(optimizer_groups(verbalizer, fast_config(head_lr=0.5))) == 1


def test_a_checkpoint_without_head_lr_in_its_config_resumes(
    make_model, bert, toy_dataset, fast_config, tmp_path
):
    """A run folder written before the option existed records no train.head_lr; it is
    the same run as head_lr None, so it resumes (and one with head_lr set refuses it)."""
    config = fast_config(steps=4, eval_every=2)
    out = tmp_path / "run"
    train(make_model(bert), toy_dataset, config, out, progress=False, stop_after=2)
    recorded = checkpoint_config(out / CHECKPOINT_FILE)
    assert "head_lr" not in recorded["train"] and "lr" in recorded["train"]
    with pytest.raises(ConfigError, match=r"train.head_lr: checkpoint '\(absent\)', now 0.5"):
        train(make_model(bert), toy_dataset, fast_config(steps=4, eval_every=2, head_lr=0.5),
              out, progress=False, resume=True)  # fmt: skip
    resumed = train(make_model(bert), toy_dataset, config, out, progress=False, resume=True)
    assert resumed.steps_done == 4


def test_resume_with_head_lr_equals_uninterrupted(
    make_model, bert, toy_dataset, fast_config, tmp_path
):
    config = fast_config(steps=4, eval_every=2, head_lr=0.01)
    straight = make_model(bert)
    train(straight, toy_dataset, config, tmp_path / "a", progress=False)
    train(make_model(bert), toy_dataset, config, tmp_path / "b", progress=False, stop_after=2)
    second = make_model(bert)
    train(second, toy_dataset, config, tmp_path / "b", progress=False, resume=True)
    after, expected = second.state_dict(), straight.state_dict()
    assert after.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(after[name], value), name


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "train.head_lr: must be a finite number > 0 (or unset: train.lr), got -1.0"),
        ("0", "train.head_lr: must be a finite number > 0"),
        ("inf", "train.head_lr: expected a number or null, got inf"),
        ("nan", "train.head_lr: expected a number or null, got nan"),
    ],
)
def test_a_bad_head_lr_is_one_line(value, message, tmp_path, capsys):
    code = cli.main(["train", "--out", str(tmp_path / "x"), "--head-lr", value])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert err.count("\n") == 1
