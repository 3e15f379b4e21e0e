"""Sequence labelling: BIO tags per word, entity-level F1 as seqeval defines it."""

from __future__ import annotations

import pytest

from softprompt.data import Dataset, Example, load_dataset
from softprompt.errors import DataError
from softprompt.evaluate import evaluate
from softprompt.metrics import entities, entity_counts, entity_f1
from softprompt.model import PromptModel
from softprompt.tasks import TaskConfig
from softprompt.tasks.tagging import TaggingTask
from softprompt.train import TrainConfig, train

TAGS = ["O", "B-film", "I-film", "B-team", "I-team"]


def test_entities_follow_seqeval_default_mode():
    # seqeval's README example: f1_score(y_true, y_pred) == 0.50
    y_true = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    y_pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    scores = entity_f1(*entity_counts(y_true, y_pred))
    assert scores["entity_f1"] == pytest.approx(0.5)
    assert scores["entity_precision"] == pytest.approx(0.5) and scores[
        "entity_recall"
    ] == pytest.approx(0.5)
    # conlleval reading: an I- after O or after another type starts a chunk; B- always does
    assert entities(["I-PER", "I-PER", "O"]) == {("PER", 0, 1)}
    assert entities(["B-PER", "I-LOC", "I-LOC"]) == {("PER", 0, 0), ("LOC", 1, 2)}
    assert entities(["B-PER", "B-PER"]) == {("PER", 0, 0), ("PER", 1, 1)}
    assert entities(["O", "O"]) == set()


def _toy_tagging() -> Dataset:
    rows = []
    for i in range(24):
        if i % 2:
            rows.append(Example("i loved the movie film", "O O O B-film I-film"))
        else:
            rows.append(Example("the team won the game", "B-team I-team O O O"))
    return Dataset("toy-ner", "tagging", TAGS, rows[:16], rows[16:20], rows[20:])


def _tagger(backbone, method="none", **options) -> PromptModel:
    config = TaskConfig(kind="tagging", labels=TAGS)
    return PromptModel(backbone, config, method=method, method_options=options)


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_llama"])
def test_first_sub_token_of_each_word_carries_its_tag(backbones, name):
    model = _tagger(backbones[name])
    assert isinstance(model.task, TaggingTask)
    batch = model.collate([Example("the team won", "B-team I-team O")])
    starts = batch["word_starts"][0]
    assert int(starts.sum()) == 3
    assert batch["targets"][0][starts].tolist() == [3, 4, 0]
    assert (batch["targets"][0][~starts] == -100).all()
    if name == "tiny_bert":  # [CLS] and [SEP] are not scored
        assert not starts[0] and batch["input_ids"][0, 0] == backbones[name].spec.bos_token_id


@pytest.mark.parametrize("method", ["none", "prefix-tuning", "soft-prompt"])
def test_p_tuning_v2_tagger_trains_and_reports_entity_f1(bert, tmp_path, method):
    options = {"n_tokens": 3, **({"hidden": 16} if method == "prefix-tuning" else {})}
    model = _tagger(bert, method, **(options if method != "none" else {}))
    data = _toy_tagging()
    before = evaluate(model, data.validation)
    config = TrainConfig(
        steps=30, batch_size=4, eval_every=10, eval_examples=4, warmup_steps=2, lr=0.05
    )
    result = train(model, data, config, tmp_path, progress=False)
    after = evaluate(PromptModel.load(result.prompt_path, bert), data.validation)
    assert {"accuracy", "entity_f1", "entity_precision", "entity_recall"} <= after.keys()
    assert after["loss"] < before["loss"]
    assert after["entity_f1"] == pytest.approx(1.0)  # a toy set a head learns in 30 steps
    predicted = model.predict(["the team won the game"])[0]
    assert predicted["tags"][:2] == ["B-team", "I-team"]
    assert predicted["entities"] == [{"type": "team", "text": "the team"}]


def test_tag_errors_name_the_problem(bert):
    model = _tagger(bert)
    with pytest.raises(DataError, match="3 words but 2 tags"):
        model.collate([Example("the team won", "O O")])
    with pytest.raises(DataError, match="not in task.labels"):
        model.collate([Example("the team", "B-person O")])


def test_wnut16_builtin_has_fixed_splits_and_bio_tags():
    data = load_dataset("wnut16-ner")
    assert data.task == "tagging" and (len(data.train), len(data.validation), len(data.test)) == (
        1916,
        239,
        239,
    )
    tags = {t for e in data.train + data.validation + data.test for t in e.label.split(" ")}
    assert tags <= set(data.labels) and len(data.labels) == 21
    assert all(len(e.text.split(" ")) == len(e.label.split(" ")) for e in data.test)
    gold = sum(len(entities(e.label.split(" "))) for e in data.train + data.validation + data.test)
    assert gold == 1496  # the entity count the source's own description gives
    assert load_dataset("wnut16-ner").test[0] == data.test[0]
