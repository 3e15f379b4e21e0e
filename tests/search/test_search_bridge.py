"""Hard -> soft (prompt files, init from a found prompt) and soft -> hard (projection)."""

from __future__ import annotations

import pytest
import torch
from toydata import LABELS, toy_examples

from softprompt.errors import ConfigError
from softprompt.evaluate import evaluate
from softprompt.model import PromptModel
from softprompt.search import TaskSpec
from softprompt.search.bridge import (
    project,
    projected_candidate,
    save_search_prompt,
    soft_init_from_prompt,
)
from softprompt.search.scorer import CandidateScorer
from softprompt.tasks import TaskConfig

FOUND = "great movie review : {text} sentiment : it was"


def _task() -> TaskConfig:
    return TaskConfig(labels=list(LABELS), template="review : {text} sentiment :")


def test_search_result_is_a_prompt_file_with_the_same_score(llama, tmp_path):
    examples = toy_examples(12, seed=4)
    path = save_search_prompt(tmp_path / "p.safetensors", llama, _task(), FOUND, search={"x": 1})
    model = PromptModel.load(path, llama)
    assert model.method_name == "none" and model.task.config.template == FOUND
    spec = TaskSpec(llama, list(LABELS), FOUND, examples)
    scorer = CandidateScorer(llama, spec.verbalizer_ids, examples)
    (score,) = scorer.score([spec.candidate(FOUND)])
    assert evaluate(model, examples)["loss"] == pytest.approx(score.loss, abs=1e-5)


def test_soft_prompt_started_from_a_hard_prompt_scores_as_the_hard_prompt(llama, tmp_path):
    """The words before {text} become the virtual tokens: step 0 is the hard prompt exactly."""
    examples = toy_examples(12, seed=4)
    path = save_search_prompt(tmp_path / "p.safetensors", llama, _task(), FOUND)
    method, task = soft_init_from_prompt(path, llama)
    assert method == {"name": "soft-prompt", "init": "text", "init_text": "great movie review :",
                      "n_tokens": 4}  # fmt: skip
    assert task["template"] == " {text} sentiment : it was"
    options = {k: v for k, v in method.items() if k != "name"}
    soft = PromptModel(llama, TaskConfig(**task), method="soft-prompt", method_options=options)
    hard = PromptModel.load(path, llama)
    assert evaluate(soft, examples)["loss"] == pytest.approx(
        evaluate(hard, examples)["loss"], abs=1e-5
    )


def test_soft_init_refuses_a_soft_prompt_file(make_model, llama, tmp_path):
    path = make_model(llama).save(tmp_path / "soft.safetensors")
    with pytest.raises(ConfigError, match="not a hard prompt"):
        soft_init_from_prompt(path, llama)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_projection_recovers_the_tokens_a_prompt_was_made_of(make_model, llama, metric):
    model = make_model(llama, init="text", init_text="great fun movie plot", n_tokens=4)
    scale = llama.input_embeddings().weight.std().item()
    noise = torch.randn(model.method.embeddings.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # a little noise: still nearest to its own token
        model.method.embeddings.add_(0.1 * scale * noise)
    result = project(model, metric)
    assert llama.tokenizer.decode(result.ids) == "great fun movie plot"
    assert all(s > 0.9 for s in result.similarity) and len(result.distance) == 4


def test_projected_hard_prompt_is_scored_in_place_of_the_vectors(make_model, llama):
    """With the token embeddings themselves as the soft prompt, the projection keeps all of it."""
    examples = toy_examples(12, seed=4)
    model = make_model(llama, init="text", init_text="great fun movie plot", n_tokens=4)
    spec = TaskSpec(llama, list(LABELS), model.task.config.template, examples)
    scorer = CandidateScorer(llama, spec.verbalizer_ids, examples)
    (score,) = scorer.score([projected_candidate(model, project(model, "cosine"))])
    assert evaluate(model, examples)["loss"] == pytest.approx(score.loss, abs=1e-5)


def test_projection_needs_input_embeddings(make_model, llama):
    with pytest.raises(ConfigError, match="no input-embedding prompt"):
        project(make_model(llama, method="none"), "cosine")
    with pytest.raises(ConfigError, match="project-metric"):
        project(make_model(llama), "dot")
