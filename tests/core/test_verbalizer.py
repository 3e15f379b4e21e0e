"""Verbalizer scores against the full-vocabulary LM computed naively with the HF model."""

from __future__ import annotations

import pytest
import torch

from softprompt.backbones.tiny import tiny_gpt2, tiny_llama
from softprompt.evaluate import evaluate
from softprompt.tasks.classification import VerbalizerTask

ATOL = 1e-5


def _naive_log_probs(backbone, prompt: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Full-vocabulary next-token log-probs at every real position of one unpadded row:
    [BOS?] + prompt + ids through the whole HF model -> (len(ids), V)."""
    embed = backbone.input_embeddings()
    parts = []
    if backbone.spec.bos_token_id is not None:
        parts.append(embed(torch.tensor([[backbone.spec.bos_token_id]])))
    parts.append(prompt.view(1, -1, backbone.spec.hidden_size))
    m = sum(p.shape[1] for p in parts)
    inputs = torch.cat(parts + [embed(torch.tensor([ids]))], dim=1)
    logits = backbone.model(inputs_embeds=inputs).logits[0, m:]  # (T, V)
    return logits


def _word_ids(backbone, word: str) -> list[int]:
    return backbone.tokenizer(word, add_special_tokens=False)["input_ids"]


@pytest.fixture(params=["tiny_llama", "tiny_gpt2"])
def causal(request, backbones):
    return backbones[request.param]


def _context(model, text: str) -> list[int]:
    return model.task.template.encode(model.task.tokenizer, text, model.task.config.max_text_tokens)


def test_single_token_fast_path_equals_full_vocab(make_model, causal, toy_dataset):
    model = make_model(causal, n_tokens=4)
    assert isinstance(model.task, VerbalizerTask) and model.task.single_token
    examples = toy_dataset.test
    with torch.no_grad():
        out = model(model.collate(examples))
        word_ids = [_word_ids(causal, " negative")[0], _word_ids(causal, " positive")[0]]
        naive = torch.stack(
            [
                _naive_log_probs(causal, model.method.embeddings, _context(model, e.text))[-1]
                for e in examples
            ]
        )
    assert out.scores.shape == (len(examples), 2)
    torch.testing.assert_close(out.scores, naive[:, word_ids], atol=ATOL, rtol=0)
    torch.testing.assert_close(
        out.scores.log_softmax(-1), naive[:, word_ids].log_softmax(-1), atol=ATOL, rtol=0
    )
    targets = torch.tensor([model.task.config.labels.index(e.label) for e in examples])
    assert torch.equal(out.targets, targets)
    expected_loss = torch.nn.functional.cross_entropy(naive[:, word_ids], targets)
    torch.testing.assert_close(out.loss, expected_loss, atol=ATOL, rtol=0)


def test_several_single_token_words_use_logsumexp(make_model, causal, toy_dataset):
    verbalizer = {"negative": [" bad", " awful", " dull"], "positive": [" good"]}
    model = make_model(causal, task={"verbalizer": verbalizer}, n_tokens=2)
    assert model.task.single_token
    examples = toy_dataset.test[:4]
    with torch.no_grad():
        scores = model(model.collate(examples)).scores
        naive = torch.stack(
            [
                _naive_log_probs(causal, model.method.embeddings, _context(model, e.text))[-1]
                for e in examples
            ]
        )
    neg = [_word_ids(causal, w)[0] for w in verbalizer["negative"]]
    pos = _word_ids(causal, " good")[0]
    expected = torch.stack([naive[:, neg].logsumexp(-1), naive[:, pos]], dim=-1)
    torch.testing.assert_close(scores, expected, atol=ATOL, rtol=0)
    # not just the first word: dropping the extra words changes the scores
    assert (scores[:, 0] - naive[:, neg[0]]).abs().min() > 1e-4


def _naive_class_scores(model, backbone, verbalizer, examples) -> torch.Tensor:
    """Each label word run after a full copy of its context: (B, C) logsumexp of the
    words' sequence log-probs."""
    expected = []
    for e in examples:
        context = _context(model, e.text)
        per_class = []
        for words in verbalizer.values():
            word_scores = []
            for word in words:
                ids = _word_ids(backbone, word)
                log_probs = _naive_log_probs(
                    backbone, model.method.embeddings, context + ids
                ).log_softmax(-1)
                # the token ids[j] is predicted at position len(context) - 1 + j
                word_scores.append(
                    sum(log_probs[len(context) - 1 + j, t] for j, t in enumerate(ids))
                )
            per_class.append(torch.stack(word_scores).logsumexp(0))
        expected.append(torch.stack(per_class))
    return torch.stack(expected)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_word_tree_scores_every_word_in_one_pass(make_model, toy_dataset, build, attention):
    """Words of 1, 2 and 3 tokens after contexts of different lengths, one row per
    example, against one naive run per (example, word); under both attention kernels
    (SDPA takes the visibility mask as bool, eager as an additive float mask)."""
    backbone = build()
    backbone.model.set_attn_implementation(attention)
    verbalizer = {"negative": [" very very bad", " awful"], "positive": [" really good"]}
    words = [w for ws in verbalizer.values() for w in ws]
    assert [len(_word_ids(backbone, w)) for w in words] == [3, 1, 2]
    model = make_model(backbone, task={"verbalizer": verbalizer}, n_tokens=3)
    examples = toy_dataset.test[:4]
    batch = model.collate(examples)
    assert batch["input_ids"].shape[0] == len(examples)  # the context is not repeated per word
    with torch.no_grad():
        scores = model(batch).scores
        expected = _naive_class_scores(model, backbone, verbalizer, examples)
    torch.testing.assert_close(scores, expected, atol=ATOL, rtol=0)


def test_multi_token_words_are_sequence_log_probs(make_model, causal, toy_dataset):
    verbalizer = {"negative": [" very bad"], "positive": [" really good", " great"]}
    model = make_model(causal, task={"verbalizer": verbalizer}, n_tokens=3)
    assert not model.task.single_token
    assert model.task.label_token_ids() == [
        _word_ids(causal, " very bad"),
        _word_ids(causal, " really good"),
    ]
    assert len(_word_ids(causal, " very bad")) == 2
    examples = toy_dataset.test[:3]
    with torch.no_grad():
        out = model(model.collate(examples))
        expected = _naive_class_scores(model, causal, verbalizer, examples)
    torch.testing.assert_close(out.scores, expected, atol=ATOL, rtol=0)
    assert (out.scores < 0).all()  # log-probabilities of sequences


def test_predict_gives_probabilities_and_argmax(make_model, llama, toy_dataset):
    model = make_model(llama, n_tokens=4)
    texts = [e.text for e in toy_dataset.test[:5]]
    predictions = model.predict(texts)
    with torch.no_grad():
        scores = model(model.collate(toy_dataset.test[:5])).scores
    probs = scores.softmax(-1)
    for row, p in zip(predictions, probs, strict=True):
        assert set(row["scores"]) == {"negative", "positive"}
        assert abs(sum(row["scores"].values()) - 1) < 1e-5
        assert row["scores"]["positive"] == pytest.approx(float(p[1]), abs=1e-5)
        assert row["label"] == ["negative", "positive"][int(p.argmax())]


def test_evaluate_counts_match_scores(make_model, llama, toy_dataset):
    model = make_model(llama, n_tokens=4)
    examples = toy_dataset.train
    result = evaluate(model, examples, batch_size=5)
    with torch.no_grad():
        out = model(model.collate(examples))
    pred = out.scores.argmax(-1)
    assert result["examples"] == len(examples)
    assert result["accuracy"] == pytest.approx(float((pred == out.targets).float().mean()))
    f1 = []
    for c in range(2):
        tp = float(((pred == c) & (out.targets == c)).sum())
        denom = float((pred == c).sum() + (out.targets == c).sum())
        f1.append(2 * tp / denom if tp else 0.0)
    assert result["macro_f1"] == pytest.approx(sum(f1) / 2)
    assert result["loss"] == pytest.approx(float(out.loss), abs=1e-5)
