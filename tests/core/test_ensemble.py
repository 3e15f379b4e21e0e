"""Prompt ensembles: K prompts of one task scored in one batched forward pass."""

from __future__ import annotations

import pytest
import torch

from softprompt.ensemble import PromptEnsemble, evaluate_ensemble
from softprompt.errors import ConfigError
from softprompt.evaluate import evaluate


def _members(make_model, backbone, k: int = 3):
    members = []
    for seed in range(k):
        model = make_model(backbone, n_tokens=2 + seed, seed=seed)
        with torch.no_grad():
            model.method.embeddings.add_(torch.randn(model.method.embeddings.shape) * 0.5)
        members.append(model)
    return members


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_bert"])
def test_member_probabilities_equal_each_member_alone(make_model, backbones, toy_dataset, name):
    members = _members(make_model, backbones[name])
    ensemble = PromptEnsemble(members)
    probs = ensemble.member_probs(toy_dataset.test)  # (K, B, C)
    assert probs.shape == (3, len(toy_dataset.test), 2)
    for k, member in enumerate(members):
        with torch.no_grad():
            alone = member(member.collate(toy_dataset.test)).scores.softmax(-1)
        torch.testing.assert_close(probs[k], alone, atol=1e-5, rtol=0)


def test_one_backbone_pass_for_all_members(make_model, llama, toy_dataset):
    ensemble = PromptEnsemble(_members(make_model, llama))
    calls = []
    hook = llama.core().register_forward_hook(lambda *a: calls.append(1))
    try:
        ensemble.member_probs(toy_dataset.test[:4])
    finally:
        hook.remove()
    assert len(calls) == 1 + 3  # the 12 real rows once; each prompt (lengths 2, 3, 4) once


def test_combine_mean_and_vote():
    probs = torch.tensor(
        [[[0.9, 0.1], [0.4, 0.6]], [[0.4, 0.6], [0.45, 0.55]], [[0.45, 0.55], [0.9, 0.1]]]
    )  # (K=3, B=2, C=2)
    assert PromptEnsemble.combine(probs, "mean").tolist() == [0, 0]  # means .58/.42 and .58/.42
    assert PromptEnsemble.combine(probs, "vote").tolist() == [1, 1]  # two of three say 1
    with pytest.raises(ConfigError, match="combine"):
        PromptEnsemble.combine(probs, "median")


def test_evaluate_ensemble_reports_members_like_evaluate(make_model, llama, toy_dataset):
    members = _members(make_model, llama)
    result = evaluate_ensemble(members, toy_dataset.test, batch_size=8)
    for member, scores in zip(members, result["members"], strict=True):
        alone = evaluate(member, toy_dataset.test)
        assert scores["accuracy"] == alone["accuracy"] and scores["macro_f1"] == alone["macro_f1"]
    assert {"ensemble_mean", "ensemble_vote"} <= result.keys() and result["examples"] == 8


def test_members_of_different_tasks_are_refused(make_model, llama):
    other = make_model(llama, task={"labels": ["no", "yes"]})
    with pytest.raises(ConfigError, match="member 1 has labels"):
        PromptEnsemble([make_model(llama), other])
