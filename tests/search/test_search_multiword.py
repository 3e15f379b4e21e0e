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
TEMPLATE = "review : {text} sentiment :"  # equal scores over many templates: test_search_scorer


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


def test_one_multi_token_word_switches_every_word_to_log_probs(llama):
    """As in training, one multi-token word puts all words on log-probabilities."""
    words = {"negative": [" bad"], "positive": [" so good"]}
    examples = toy_examples(10, seed=3)
    scorer = CandidateScorer(
        llama, Verbalizer.build(list(LABELS), words, llama.tokenizer), examples
    )
    (score,) = scorer.score([Candidate.from_template(TEMPLATE, llama.tokenizer)])
    reference = _trained_scores(llama, TEMPLATE, examples, words)
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
            "--template", TEMPLATE, "--verbalizer", json.dumps(WORDS), "--top", "1",
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    (found,) = sorted(out.glob("greedy-edit-seed0-*.safetensors"))
    assert load_prompt_meta(found)["task"]["verbalizer"] == WORDS
