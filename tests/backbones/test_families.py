"""Scores equal a plain transformers forward on every causal LM family users pick.

Each family differs at the ends of the model (Gemma scales input embeddings and
soft-caps logits, Phi's head has a bias, Cohere scales logits, Qwen and GPT-2 add
no BOS, Gemma 2 runs eager attention, Mistral/Gemma have sliding-window layers).
softprompt's zero-prompt scores must equal `model(input_ids).logits`, its prompt
gradients a naive concatenation through the full model, and its mixed-prompt
batches each row run alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softprompt.backbones.tiny import FAMILIES, tiny_causal
from softprompt.data import Example
from softprompt.evaluate import evaluate
from softprompt.inject import Prompt, RowPrompts
from softprompt.model import PromptModel
from softprompt.search.scorer import Candidate, CandidateScorer, Verbalizer
from softprompt.tasks import TaskConfig

ATOL = 1e-5
LABELS = ["negative", "positive"]
TEMPLATE = "review : {text} sentiment :"
ROWS = [
    Example("a dull plot", "negative"),
    Example("the movie was really very good and fun", "positive"),
    Example("bad", "negative"),
]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return tiny_causal(request.param)


def _model(backbone, method="none", **task) -> PromptModel:
    options = {"n_tokens": 3} if method != "none" else {}
    config = TaskConfig(labels=list(LABELS), template=TEMPLATE, **task)
    return PromptModel(backbone, config, method=method, method_options=options)


def _plain_ids(backbone, model: PromptModel, example: Example) -> list[int]:
    """What the model itself would see for this row: [BOS] + filled template."""
    bos = [backbone.spec.bos_token_id] if backbone.spec.bos_token_id is not None else []
    return bos + model.task.contexts([example])[0]


def test_zero_prompt_label_scores_equal_plain_logits(family):
    model = _model(family)
    with torch.no_grad():
        scores = model(model.collate(ROWS)).scores  # (B, C)
        words = torch.tensor(model.task.first_tokens)
        for row, example in enumerate(ROWS):
            ids = torch.tensor([_plain_ids(family, model, example)])
            logits = family.model(input_ids=ids).logits[0, -1]  # (V,)
            torch.testing.assert_close(scores[row], logits[words], atol=ATOL, rtol=0)


def test_zero_prompt_multi_token_words_equal_plain_log_probs(family):
    verbalizer = {"negative": [" very bad"], "positive": [" really good", " fun"]}
    model = _model(family, verbalizer=verbalizer)
    assert not model.task.single_token
    with torch.no_grad():
        scores = model(model.collate(ROWS[:2])).scores  # (B, C) log-sum-exp of word log-probs
        for row, example in enumerate(ROWS[:2]):
            context = _plain_ids(family, model, example)
            per_class = []
            for words in model.task.word_ids:
                word_lps = []
                for word in words:
                    ids = torch.tensor([context + word])
                    lp = family.model(input_ids=ids).logits[0].log_softmax(-1)  # (T, V)
                    steps = range(len(context) - 1, len(context) - 1 + len(word))
                    word_lps.append(sum(lp[s, t] for s, t in zip(steps, word, strict=True)))
                per_class.append(torch.stack(word_lps).logsumexp(0))
            torch.testing.assert_close(scores[row], torch.stack(per_class), atol=ATOL, rtol=0)


def test_soft_prompt_loss_and_gradient_equal_naive_concatenation(family):
    model = _model(family, method="soft-prompt")
    out = model(model.collate(ROWS))
    out.loss.backward()
    ours = model.method.embeddings.grad.clone()

    prompt = model.method.embeddings.detach().clone().requires_grad_(True)  # (n, d)
    embed = family.input_embeddings()
    words = torch.tensor(model.task.first_tokens)
    losses = []
    for example in ROWS:
        context = model.task.contexts([example])[0]
        parts = [prompt[None], embed(torch.tensor([context]))]
        if family.spec.bos_token_id is not None:
            parts.insert(0, embed(torch.tensor([[family.spec.bos_token_id]])))
        logits = family.model(inputs_embeds=torch.cat(parts, 1)).logits[0, -1]  # (V,)
        target = torch.tensor(LABELS.index(example.label))
        losses.append(F.cross_entropy(logits[words][None], target[None]))
    naive = torch.stack(losses).mean()
    naive.backward()
    torch.testing.assert_close(out.loss, naive, atol=ATOL, rtol=0)
    assert ours.abs().max() > 0
    torch.testing.assert_close(ours, prompt.grad, atol=ATOL, rtol=0)


def test_mixed_prompts_equal_each_row_alone(family):
    soft = _model(family, method="soft-prompt")
    prefix = _model(family, method="prefix-tuning")
    prompts = [soft.prompt(), prefix.prompt(), Prompt()]
    batch = soft.collate(ROWS)
    rows = RowPrompts.per_row(prompts, [0, 1, 2])
    with torch.no_grad():
        together = soft.injector.hidden_states(rows, batch["input_ids"], batch["attention_mask"])
        for row, prompt in enumerate(prompts):
            length = int(batch["attention_mask"][row].sum())
            ids = batch["input_ids"][row : row + 1, :length]
            alone = soft.injector.hidden_states(prompt, ids, torch.ones_like(ids))
            torch.testing.assert_close(together[row, :length], alone[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "templates",
    [
        ["review : {text} sentiment :", "{text} it was", "a film . {text} sentiment :"],
        ["review : {text} sentiment :", "review : {text} so it was"],
    ],
    ids=["fronts-packed", "tails"],
)
def test_search_scorer_equals_evaluate(family, templates):
    """The candidate scorer's shared-prefix, packed and side-by-side-tail layouts give
    the scores `evaluate` gives (itself checked against plain logits above)."""
    verbalizer = Verbalizer.build(LABELS, None, family.tokenizer)
    scorer = CandidateScorer(family, verbalizer, ROWS, pack_tokens=16)
    scores = scorer.score([Candidate.from_template(t, family.tokenizer) for t in templates])
    for template, score in zip(templates, scores, strict=True):
        model = PromptModel(family, TaskConfig(labels=list(LABELS), template=template), "none")
        reference = evaluate(model, ROWS)
        assert score.accuracy == pytest.approx(reference["accuracy"], abs=1e-6)
        assert score.loss == pytest.approx(reference["loss"], abs=ATOL)
