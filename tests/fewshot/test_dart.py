"""DART (methods/dart.py): what trains, how it scores, and its fluency loss."""

from __future__ import annotations

import pytest
import torch
from toydata import LABELS, TEMPLATE, toy_examples

from softprompt.errors import ConfigError
from softprompt.inject.label_words import head_rows
from softprompt.methods import make_method_config
from softprompt.methods.dart import fluency_positions
from softprompt.model import MultiTaskModel, PromptModel
from softprompt.tasks import TaskConfig
from softprompt.train import train

SLOTS = "review : {p:2} {text} {p:2} sentiment :"


def _dart(backbone, template: str = SLOTS, **options) -> PromptModel:
    task = TaskConfig(labels=list(LABELS), template=template)
    return PromptModel(backbone, task, method="dart", method_options={"n_tokens": 4, **options})


def test_trainable_set_is_exactly_the_template_and_label_tokens(llama):
    model = _dart(llama)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    d = llama.spec.hidden_size
    assert shapes == {"method.template": (4, d), "method.labels": (2, d)}
    assert all(not p.requires_grad for p in llama.model.parameters())


def test_label_tokens_start_from_the_label_words_rows(llama):
    model = _dart(llama, init="text", init_text="review sentiment")
    ids = [llama.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in LABELS]
    assert torch.equal(model.method.labels.detach(), head_rows(llama, ids))
    words = llama.tokenizer("review sentiment", add_special_tokens=False)["input_ids"]
    real = llama.input_embeddings()(torch.tensor(words * 2)).float()  # (4, d)
    assert torch.allclose(model.method.template.detach(), real)


def test_at_init_it_scores_as_the_manual_label_words(llama):
    model = _dart(llama)
    batch = model.collate(toy_examples(6, seed=4))
    learned = model(batch).scores
    model.task.label_rows = None  # the frozen rows of the same words
    assert torch.allclose(learned, model(batch).scores, atol=1e-5)


def test_words_sharing_a_first_token_start_apart_and_collate_no_word_tree(llama):
    """Newsgroup names (' comp.graphics', ' comp.windows.x') share their first token: rows
    from it alone tied those classes at step 0. DART reads only the answer state, so
    its batches carry no word tree (the tree costs every row the words' tokens)."""
    words = {"negative": [" very bad"], "positive": [" very good"]}
    task = TaskConfig(labels=list(LABELS), template=SLOTS, verbalizer=words)
    model = PromptModel(llama, task, method="dart", method_options={"n_tokens": 4})
    ids = [llama.tokenizer(w[0], add_special_tokens=False)["input_ids"] for w in words.values()]
    assert len(ids[0]) == 2 and ids[0][0] == ids[1][0]
    expected = torch.stack([head_rows(llama, i).mean(0) for i in ids])
    assert torch.equal(model.method.labels.detach(), expected)
    examples = toy_examples(6, seed=4)
    batch = model.collate(examples)
    assert batch["input_ids"].shape[1] == max(len(c) for c in model.task.contexts(examples))
    scores = model(batch).scores
    assert not torch.allclose(scores[:, 0], scores[:, 1])
    tree = model.task.tree.collate(model.task.contexts(examples), model.task.pad_id)
    tree = model.task.with_targets(model.task.with_slots(tree, examples), examples)
    torch.testing.assert_close(model(tree).scores, scores, atol=1e-5, rtol=0)


def test_scores_follow_the_learned_label_rows(llama):
    model = _dart(llama)
    batch = model.collate(toy_examples(6, seed=4))
    with torch.no_grad():
        model.method.labels[1] = model.method.labels[0]
    scores = model(batch).scores
    assert torch.allclose(scores[:, 0], scores[:, 1])


def test_fluency_loss_trains_the_template_only_and_only_in_training(llama):
    model = MultiTaskModel.single("toy", _dart(llama, fluency_rate=1.0))
    batch = model.collate([("toy", e) for e in toy_examples(6, seed=4)])
    model.train()
    extra = model.auxiliary_loss(batch)
    assert extra.item() > 0
    extra.backward()
    dart = model.models["toy"].method
    assert dart.template.grad.abs().sum() > 0 and dart.labels.grad is None
    assert model(batch).loss.item() == pytest.approx(
        extra.item() + model.models["toy"](batch.parts[0][1]).loss.item(), rel=1e-5
    )
    model.eval()
    assert model.auxiliary_loss(batch) != 0 and model(batch).loss.item() == pytest.approx(
        model.models["toy"](batch.parts[0][1]).loss.item()
    )


def test_fluency_positions_are_seeded_real_context_tokens(llama):
    model = _dart(llama)
    batch = model.collate(toy_examples(8, seed=4))
    picked = fluency_positions(batch, 0.5, seed=0)
    assert torch.equal(picked, fluency_positions(batch, 0.5, seed=0))
    steps = torch.arange(picked.shape[1])[None, :]
    assert not (picked & (steps > batch["answer_index"][:, None])).any()
    assert not (picked & (batch["inline_index"] >= 0)).any() and not picked[:, 0].any()


def test_trains_in_the_shared_loop_and_round_trips(llama, toy_dataset, fast_config, tmp_path):
    model = _dart(llama, template=TEMPLATE)
    before = [p.clone() for p in llama.model.parameters()]
    result = train(model, toy_dataset, fast_config(), tmp_path, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, llama.model.parameters(), strict=True))
    loaded = PromptModel.load(result.prompt_path, llama)
    batch = loaded.collate(toy_examples(4, seed=9))
    assert torch.equal(
        loaded.method.labels, PromptModel.load(result.prompt_path, llama).method.labels
    )
    assert loaded.task.label_rows is not None and loaded(batch).scores.shape == (4, 2)


def test_a_task_without_label_words_is_refused(bert):
    task = TaskConfig(labels=list(LABELS), head="linear")
    with pytest.raises(ConfigError, match="dart learns label tokens"):
        PromptModel(bert, task, method="dart")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fluency_weight": -1}, "method.fluency_weight: must be >= 0"),
        ({"fluency_rate": 0}, r"method.fluency_rate: must be in \(0, 1\]"),
        ({"fluency_rate": 1.5}, r"method.fluency_rate: must be in \(0, 1\]"),
    ],
)
def test_bad_options_are_one_line(options, message):
    with pytest.raises(ConfigError, match=message):
        make_method_config("dart", options)


def test_a_mixed_batch_scores_dart_rows_as_alone(llama, make_model):
    dart, soft = _dart(llama), make_model(llama)
    with torch.no_grad():
        dart.method.labels.add_(torch.randn(dart.method.labels.shape, generator=_gen()))
    texts = [e.text for e in toy_examples(4, seed=6)]
    mixed = MultiTaskModel({"dart": dart, "soft": soft}).predict(
        [(name, t) for t in texts for name in ("dart", "soft")]
    )
    alone = dart.predict(texts)
    for got, want in zip(mixed[::2], alone, strict=True):
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(3)
