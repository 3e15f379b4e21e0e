"""Scores for generated text, computed by the libraries the field reports with.

BLEU is sacreBLEU's corpus BLEU (default 13a tokenization, exp smoothing: the numbers
papers quote, 0-100); ROUGE-L is rouge-score's F-measure (Porter stemming on, as the
GEM and E2E scripts use it), the best over a row's references, averaged over rows and
shown 0-100 like BLEU; exact match is the share of rows (0-1, like accuracy) whose
output equals one of its references after trimming outer spaces.

Multiple references: test rows that share one input text are one item whose
references are all their targets (E2E gives several human texts per meaning
representation; a user's JSONL can repeat an input the same way). Each distinct input
is generated once and scored against every reference of its group.
"""

from __future__ import annotations

from collections.abc import Sequence

from softprompt.data import Example

GENERATION_METRICS = ("bleu", "rouge_l", "exact_match")


def group_references(examples: Sequence[Example]) -> tuple[list[str], list[list[str]]]:
    """Distinct input texts in first-seen order, and each one's targets (its references)."""
    groups: dict[str, list[str]] = {}
    for example in examples:
        groups.setdefault(example.text, []).append(example.label)
    return list(groups), list(groups.values())


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacreBLEU corpus BLEU (0-100) of one hypothesis per item against its references.

    Items may have different numbers of references: sacreBLEU takes reference streams
    and ignores None, so the shorter lists are padded with None."""
    import sacrebleu

    _check_lengths(hypotheses, references)
    width = max((len(r) for r in references), default=0)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams).score)


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over items of rouge-score's ROUGE-L F-measure against the best reference (0-100)."""
    from rouge_score import rouge_scorer

    _check_lengths(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [
        scorer.score_multi(list(refs), hyp)["rougeL"].fmeasure
        for hyp, refs in zip(hypotheses, references, strict=True)
    ]
    return 100 * sum(scores) / max(len(scores), 1)


def exact_match(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Share of items (0-1) whose hypothesis equals one of its references, outer spaces trimmed."""
    _check_lengths(hypotheses, references)
    hits = sum(
        hyp.strip() in {r.strip() for r in refs}
        for hyp, refs in zip(hypotheses, references, strict=True)
    )
    return hits / max(len(hypotheses), 1)


def generation_metrics(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """BLEU, ROUGE-L and exact match of one output per item (see the module docstring)."""
    return {
        "bleu": corpus_bleu(hypotheses, references),
        "rouge_l": rouge_l(hypotheses, references),
        "exact_match": exact_match(hypotheses, references),
    }


def _check_lengths(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(hypotheses) != len(references) or any(not refs for refs in references):
        raise ValueError(
            f"{len(hypotheses)} outputs against {len(references)} reference lists; "
            "every output needs at least one reference"
        )
