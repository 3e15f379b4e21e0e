"""Generation metrics: our wrappers give what sacreBLEU and rouge-score give themselves."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from softprompt.data import Example
from softprompt.tasks.text_metrics import (
    corpus_bleu,
    exact_match,
    generation_metrics,
    group_references,
    rouge_l,
)

# sacreBLEU's own README example: two reference streams, BLEU = 48.53
HYPS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
STREAMS = [
    ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
    ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
]
PER_ITEM = [list(refs) for refs in zip(*STREAMS, strict=True)]


def test_bleu_equals_sacrebleu_corpus_bleu_on_its_readme_example():
    assert corpus_bleu(HYPS, PER_ITEM) == sacrebleu.corpus_bleu(HYPS, STREAMS).score
    assert round(corpus_bleu(HYPS, PER_ITEM), 2) == 48.53


def test_bleu_with_a_different_number_of_references_per_item():
    refs = [PER_ITEM[0], PER_ITEM[1], PER_ITEM[2][:1]]  # the third item has one reference
    expected = sacrebleu.corpus_bleu(HYPS, [STREAMS[0], [*STREAMS[1][:2], None]]).score
    assert corpus_bleu(HYPS, refs) == expected
    assert expected != corpus_bleu(HYPS, PER_ITEM)  # the dropped reference mattered
    single = sacrebleu.corpus_bleu(HYPS, [STREAMS[0]]).score
    assert corpus_bleu(HYPS, [[r[0]] for r in PER_ITEM]) == single


def test_rouge_l_is_rouge_score_f_measure_best_over_references():
    hyp, target = (
        "The quick brown dog jumps on the log.",
        "The quick brown fox jumps over the lazy dog",
    )
    # LCS "the quick brown jump(s) the" = 5 of 8 predicted, 5 of 9 target words: F = 50/85
    assert rouge_l([hyp], [[target]]) == pytest.approx(100 * 50 / 85)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    refs = [target, "The quick brown dog jumps on the log"]
    best = max(scorer.score(r, hyp)["rougeL"].fmeasure for r in refs)
    assert rouge_l([hyp], [refs]) == pytest.approx(100 * best) and best == 1.0
    mean = (50 / 85 + 1.0) / 2
    assert rouge_l([hyp, hyp], [[target], refs]) == pytest.approx(100 * mean)


def test_exact_match_counts_any_reference_after_trimming():
    assert exact_match(["a b ", "c", "d"], [["x", "a b"], ["C"], ["d"]]) == pytest.approx(2 / 3)


def test_metrics_refuse_an_output_without_references():
    with pytest.raises(ValueError, match="at least one reference"):
        generation_metrics(["a"], [[]])
    with pytest.raises(ValueError, match="2 outputs against 1"):
        corpus_bleu(["a", "b"], [["a"]])


def test_rows_sharing_an_input_are_its_references_in_first_seen_order():
    rows = [Example("mr 2", "b1"), Example("mr 1", "a1"), Example("mr 2", "b2")]
    assert group_references(rows) == (["mr 2", "mr 1"], [["b1", "b2"], ["a1"]])
