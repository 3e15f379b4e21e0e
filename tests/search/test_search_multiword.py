"""`search` scores multi-token label words as `train` does: the sum of their tokens'
log-probabilities (tasks/word_tree.py), log-sum-exp per class, cross-entropy over classes.

Before, search refused any label word of more than one token that `train` accepted.
"""

from __future__ import annotations

import csv
import json

import pytest
from toydata import LABELS, toy_examples

from softprompt import cli
from softprompt.evaluate import evaluate
from softprompt.model import PromptModel, load_prompt_meta
from softprompt.search.scorer import Candidate, CandidateScorer, Verbalizer
from softprompt.tasks import TaskConfig

# several tokens per word, words of different lengths, a one-token word among them, and
# words sharing a first token (" very bad" / " very good"): the word tree's hard cases
WORDS = {
    "negative": [" very bad", " awful", " really bad movie"],
    "positive": [" very good", " so good"],
}
FRONTS = [  # each candidate's own prefix: pairs packed after it
    "review : {text} sentiment :",
    "the movie {text} sentiment : it was",
    "{text} :",
]
TAILS = [  # only the tail differs: the text runs once for every candidate
    "review : {text} sentiment :",
    "review : {text} it was",
    "review : {text} so",
]


def _trained_scores(backbone, template, examples, words=WORDS):
    """What `train`/`eval` report for this template with no prompt (VerbalizerTask)."""
    config = TaskConfig(labels=list(LABELS), template=template, verbalizer=words)
    return evaluate(PromptModel(backbone, config, method="none"), examples, batch_size=5)


def test_multi_token_words_build_with_every_token():
    from softprompt.backbones.tiny import tiny_llama

    tokenizer = tiny_llama().tokenizer
    verbalizer = Verbalizer.build(list(LABELS), WORDS, tokenizer)
    assert not verbalizer.single_token
    ids = lambda w: tokenizer(w, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert verbalizer.sequences[0] == [ids(w) for w in WORDS["negative"]]
    assert verbalizer.word_ids[1] == [ids(w)[0] for w in WORDS["positive"]]
    assert () in verbalizer.steps and len(verbalizer.steps) == len(set(verbalizer.steps))


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("templates", [FRONTS, TAILS], ids=["fronts", "tails"])
@pytest.mark.parametrize("limit,group", [(256, 16), (5, 5)])  # one call; or groups x chunks
def test_scores_equal_training_scores(backbones, name, templates, limit, group):
    backbone = backbones[name]
    examples = toy_examples(12, seed=5)
    verbalizer = Verbalizer.build(list(LABELS), WORDS, backbone.tokenizer)
    scorer = CandidateScorer(
        backbone, verbalizer, examples, max_rows=limit, max_tail_tokens=limit, example_group=group
    )
    scores = scorer.score([Candidate.from_template(t, backbone.tokenizer) for t in templates])
    for template, score in zip(templates, scores, strict=True):
        reference = _trained_scores(backbone, template, examples)
        assert score.accuracy == reference["accuracy"]
        assert score.loss == pytest.approx(reference["loss"], abs=1e-5)
    assert scorer.evaluations == len(templates)  # a word prefix is no extra evaluation


def test_one_multi_token_word_switches_every_word_to_log_probs(llama):
    """As in training, one multi-token word puts all words on log-probabilities."""
    words = {"negative": [" bad"], "positive": [" so good"]}
    examples = toy_examples(10, seed=3)
    scorer = CandidateScorer(
        llama, Verbalizer.build(list(LABELS), words, llama.tokenizer), examples
    )
    (score,) = scorer.score([Candidate.from_template(TAILS[0], llama.tokenizer)])
    reference = _trained_scores(llama, TAILS[0], examples, words)
    assert score.loss == pytest.approx(reference["loss"], abs=1e-5)


def test_search_command_takes_the_multi_word_verbalizer_train_takes(capsys, llama_folder, tmp_path):
    data = tmp_path / "toy.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i, example in enumerate(toy_examples(60, seed=9)):
            writer.writerow([f"{example.text} {i}", example.label])
    out = tmp_path / "found"
    argv = ["search", "--backbone", str(llama_folder), "--dataset", str(data), "--method",
            "greedy-edit", "--budget", "3", "--examples", "8", "--test-examples", "8",
            "--template", TAILS[0], "--verbalizer", json.dumps(WORDS), "--top", "1",
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    (found,) = sorted(out.glob("greedy-edit-seed0-*.safetensors"))
    assert load_prompt_meta(found)["task"]["verbalizer"] == WORDS
