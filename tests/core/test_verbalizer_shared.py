"""One verbalizer for training and search (issue 18 step 3): the label words a task scores
and the words discrete search scores are one object, built, checked and pooled alike."""

from __future__ import annotations

import pytest
import torch

from softprompt.errors import ConfigError
from softprompt.search import TaskSpec, scorer
from softprompt.tasks import TaskConfig
from softprompt.tasks.classification import VerbalizerTask
from softprompt.tasks.verbalizer import Verbalizer, default_words

LABELS = ["negative", "positive"]
WORDS = {"negative": [" bad", " awful"], "positive": [" good"]}


def test_search_and_training_read_the_same_verbalizer(llama):
    task = VerbalizerTask(TaskConfig(labels=LABELS, verbalizer=WORDS), llama)
    spec = TaskSpec(llama, LABELS, "{text} It was", [], verbalizer=WORDS)
    assert scorer.Verbalizer is Verbalizer
    assert isinstance(task.verbalizer, Verbalizer) and isinstance(spec.verbalizer_ids, Verbalizer)
    assert task.verbalizer == spec.verbalizer_ids
    assert task.word_ids == spec.verbalizer_ids.sequences
    assert task.first_tokens == [ids[0] for ws in task.word_ids for ids in ws]


def test_default_words_are_the_label_names_after_a_space(llama):
    verbalizer = Verbalizer.build(LABELS, None, llama.tokenizer)
    assert (
        verbalizer.words == [[" negative"], [" positive"]] == list(default_words(LABELS).values())
    )
    task = VerbalizerTask(TaskConfig(labels=LABELS), llama)
    assert task.words == verbalizer.words


def test_class_scores_pool_each_class_by_log_sum_exp():
    verbalizer = Verbalizer(labels=LABELS, word_ids=[[5, 6], [7]])
    word_scores = torch.tensor([[0.0, 1.0, 2.0]])  # (B, W)
    expected = torch.tensor([[torch.tensor([0.0, 1.0]).logsumexp(0), 2.0]])
    torch.testing.assert_close(verbalizer.per_class(word_scores), expected)


def test_an_empty_word_is_refused_alike_for_training_and_search(llama):
    words = {"negative": [""], "positive": [" good"]}
    with pytest.raises(ConfigError, match="a label word of 'negative' has no tokens"):
        VerbalizerTask(TaskConfig(labels=LABELS, verbalizer=words), llama)
    with pytest.raises(ConfigError, match="a label word of 'negative' has no tokens"):
        Verbalizer.build(LABELS, words, llama.tokenizer)
