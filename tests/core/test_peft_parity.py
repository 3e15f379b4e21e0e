"""Where softprompt and PEFT run the same method, they must give the same numbers.

Soft prompt tuning on a model without BOS: PEFT concatenates the virtual tokens in
front of every row and runs the full model; softprompt runs them once and shares
their keys/values. Scores at the answer position and prompt gradients must agree.
"""

from __future__ import annotations

import peft  # a dev dependency: the parity checks are not optional
import pytest
import torch
import torch.nn.functional as F

from softprompt.backbones.tiny import tiny_gpt2


@pytest.fixture()
def pair(make_model, toy_dataset):
    backbone = tiny_gpt2()  # a fresh one: PEFT wraps (and may touch) the model
    ours = make_model(backbone, n_tokens=5, init="vocab")
    config = peft.PromptTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=5)
    theirs = peft.get_peft_model(backbone.model, config)
    with torch.no_grad():
        theirs.prompt_encoder.default.embedding.weight.copy_(ours.method.embeddings)
    return ours, theirs


def _peft_scores(ours, theirs, batch):
    word_rows = torch.tensor([ws[0][0] for ws in ours.task.word_ids])
    logits = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rows = torch.arange(len(batch["input_ids"]))
    return logits[rows, 5 + batch["answer_index"]][:, word_rows]  # (B, C)


def test_scores_match_peft(pair, toy_dataset):
    ours, theirs = pair
    batch = ours.collate(toy_dataset.test)
    with torch.no_grad():
        mine = ours(batch).scores
        peft_scores = _peft_scores(ours, theirs, batch)
    torch.testing.assert_close(mine, peft_scores, atol=1e-5, rtol=1e-5)


def test_prompt_gradients_match_peft(pair, toy_dataset):
    ours, theirs = pair
    batch = ours.collate(toy_dataset.train[:6])
    ours(batch).loss.backward()
    F.cross_entropy(_peft_scores(ours, theirs, batch), batch["targets"]).backward()
    mine = ours.method.embeddings.grad
    peft_grad = theirs.prompt_encoder.default.embedding.weight.grad
    assert mine.abs().sum() > 0
    torch.testing.assert_close(mine, peft_grad, atol=1e-6, rtol=1e-4)
