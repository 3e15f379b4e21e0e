"""The batched candidate scorer gives softprompt's own scores, in both layouts."""

from __future__ import annotations

import pytest
from toydata import LABELS, toy_examples

from softprompt.errors import ConfigError
from softprompt.evaluate import evaluate
from softprompt.model import PromptModel
from softprompt.search.scorer import Candidate, CandidateScorer, Verbalizer
from softprompt.tasks import TaskConfig

WORDS = {"negative": [" bad", " awful"], "positive": [" good"]}
# several tokens per word, of different lengths, a one-token word among them, and words
# sharing a first token (" very bad" / " very good"): the word tree's hard cases
MULTI_TOKEN_WORDS = {
    "negative": [" very bad", " awful", " really bad movie"],
    "positive": [" very good", " so good"],
}
FRONTS = [  # instructions differ in front: each candidate's own prefix, text per pair
    "review : {text} sentiment :",
    "review : {text} answer :",
    "the movie {text} sentiment : it was",
    "{text} :",
    "this film . {text} so it was",
    "review : {text}",
]
TAILS = [  # only the tail differs: the text runs once for every candidate
    "review : {text} sentiment :",
    "review : {text} it was",
    "review : {text} so",
    "review : {text} movie was very",
]


def _reference(backbone, template, examples, words=WORDS):
    """What `train`/`eval` report for this template with no prompt."""
    config = TaskConfig(labels=list(LABELS), template=template, verbalizer=words)
    return evaluate(PromptModel(backbone, config, method="none"), examples, batch_size=5)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("templates", [FRONTS, TAILS], ids=["fronts", "tails"])
@pytest.mark.parametrize("limit,group", [(256, 16), (5, 5)])  # one call; or 3 groups x chunks
@pytest.mark.parametrize("words", [WORDS, MULTI_TOKEN_WORDS], ids=["one-token", "multi-token"])
def test_scores_equal_softprompt_evaluate(backbones, name, templates, limit, group, words):
    """Multi-token words are scored as `train` does: summed token log-probs per word."""
    backbone = backbones[name]
    examples = toy_examples(12, seed=5)
    verbalizer = Verbalizer.build(list(LABELS), words, backbone.tokenizer)
    scorer = CandidateScorer(
        backbone, verbalizer, examples, max_rows=limit, max_tail_tokens=limit, example_group=group
    )
    scores = scorer.score([Candidate.from_template(t, backbone.tokenizer) for t in templates])
    for template, score in zip(templates, scores, strict=True):
        reference = _reference(backbone, template, examples, words)
        assert score.accuracy == reference["accuracy"]
        assert score.loss == pytest.approx(reference["loss"], abs=1e-5)
    assert scorer.evaluations == len(templates)  # a word prefix is no extra evaluation


def test_text_budget_is_applied_as_in_the_task(llama):
    examples = toy_examples(6, seed=7)
    verbalizer = Verbalizer.build(list(LABELS), WORDS, llama.tokenizer)
    scorer = CandidateScorer(llama, verbalizer, examples, max_text_tokens=3)
    (score,) = scorer.score([Candidate.from_template(FRONTS[0], llama.tokenizer)])
    config = TaskConfig(
        labels=list(LABELS), template=FRONTS[0], verbalizer=WORDS, max_text_tokens=3
    )
    reference = evaluate(PromptModel(llama, config, method="none"), examples)
    assert score.loss == pytest.approx(reference["loss"], abs=1e-5)


def test_empty_label_words_are_refused_by_name(llama):
    # multi-token words are scored as training scores them: test_search_multiword.py
    with pytest.raises(ConfigError, match="a label word of 'negative' has no tokens"):
        Verbalizer.build(list(LABELS), {"negative": [""], "positive": [" good"]}, llama.tokenizer)


def test_encoder_backbones_are_refused(bert):
    verbalizer = Verbalizer(labels=list(LABELS), word_ids=[[5], [6]])
    with pytest.raises(ConfigError, match="causal LM"):
        CandidateScorer(bert, verbalizer, toy_examples(2, seed=1))


def test_eager_attention_gets_an_additive_mask():
    from softprompt.backbones.tiny import tiny_llama

    backbone = tiny_llama()  # a fresh copy switched to eager attention
    backbone.model.set_attn_implementation("eager")
    assert backbone.model.config._attn_implementation == "eager"
    examples = toy_examples(8, seed=5)
    verbalizer = Verbalizer.build(list(LABELS), WORDS, backbone.tokenizer)
    scorer = CandidateScorer(backbone, verbalizer, examples)
    scores = scorer.score([Candidate.from_template(t, backbone.tokenizer) for t in TAILS])
    for template, score in zip(TAILS, scores, strict=True):
        assert score.loss == pytest.approx(
            _reference(backbone, template, examples)["loss"], abs=1e-5
        )


def test_each_candidate_prefix_runs_once_for_all_example_groups(llama, monkeypatch):
    """Front candidates: the prefix pass is shared by every example group (3 here)."""
    examples = toy_examples(12, seed=5)
    verbalizer = Verbalizer.build(list(LABELS), WORDS, llama.tokenizer)
    scorer = CandidateScorer(llama, verbalizer, examples, max_rows=10, example_group=5)
    calls = []
    heads = scorer._heads
    monkeypatch.setattr(scorer, "_heads", lambda chunk: calls.append(len(chunk)) or heads(chunk))
    scorer.score([Candidate.from_template(t, llama.tokenizer) for t in FRONTS])
    assert calls == [2, 2, 2]  # 6 candidates, 10 // 5 = 2 per chunk, one prefix pass each


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("pack,per_call", [(10, 64), (40, 64), (40, 1)])
def test_packed_front_pairs_equal_softprompt_evaluate(backbones, name, pack, per_call):
    """Pairs packed end to end (one per row, several per row, one row per call)."""
    backbone = backbones[name]
    examples = toy_examples(12, seed=5)
    verbalizer = Verbalizer.build(list(LABELS), WORDS, backbone.tokenizer)
    scorer = CandidateScorer(
        backbone, verbalizer, examples, pack_tokens=pack, max_packed_rows=per_call
    )
    scores = scorer.score([Candidate.from_template(t, backbone.tokenizer) for t in FRONTS])
    for template, score in zip(FRONTS, scores, strict=True):
        reference = _reference(backbone, template, examples)
        assert score.accuracy == reference["accuracy"]
        assert score.loss == pytest.approx(reference["loss"], abs=1e-5)


def test_packed_front_pairs_run_no_padding_rows(llama, monkeypatch):
    """Several pairs share a packed row, so fewer rows run than there are pairs, and
    the tokens run are the pairs' real tokens plus the prefixes (no padding per pair)."""
    examples = toy_examples(12, seed=5)
    verbalizer = Verbalizer.build(list(LABELS), WORDS, llama.tokenizer)
    scorer = CandidateScorer(llama, verbalizer, examples, pack_tokens=64)
    candidates = [Candidate.from_template(t, llama.tokenizer) for t in FRONTS[:3]]
    real = sum(len(scorer.body(c.lead, e.text)) + len(c.suffix)
               for c in candidates for e in examples)  # fmt: skip
    shapes = []
    core = scorer.injector.run_core  # every model call goes through the injector
    monkeypatch.setattr(
        scorer.injector,
        "run_core",
        lambda **kw: shapes.append(kw["inputs_embeds"].shape[:2]) or core(**kw),
    )
    scorer.score(candidates)
    rows, width = shapes[-1]
    assert rows < len(candidates) * len(examples)
    assert real <= rows * width < real + rows * 64
