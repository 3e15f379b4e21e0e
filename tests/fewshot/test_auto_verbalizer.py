"""Automatic label words (tasks/auto_verbalizer.py): planted words are found."""

from __future__ import annotations

import pytest
import torch
from toydata import LABELS, TEMPLATE, toy_examples

from softprompt.backbones.tiny import tiny_llama
from softprompt.config import RunConfig, build_run_config
from softprompt.data import Dataset, Example
from softprompt.errors import ConfigError
from softprompt.model import build_model
from softprompt.recipes.baselines import TuneConfig, tuned_baseline
from softprompt.tasks import TaskConfig
from softprompt.tasks.auto_verbalizer import (
    Candidate,
    assign,
    best_ratios,
    first_words,
    parse_auto,
    resolve_verbalizer,
    search_words,
    without_slots,
)

PLANTED = {"negative": "no", "positive": "yes"}


def _plant(backbone, rows) -> None:
    """Teach a fresh tiny model to say the planted word after each class's rows, so the
    search has a clear best word per class (the model is built for this test only)."""
    tok, model = backbone.tokenizer, backbone.model
    texts = [TEMPLATE.format(text=e.text) for e in rows]
    targets = torch.tensor([tok.convert_tokens_to_ids(PLANTED[e.label]) for e in rows])
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=3e-3)
    torch.manual_seed(0)
    for _ in range(120):
        losses = []
        for text, target in zip(texts, targets, strict=True):
            ids = torch.tensor([tok(text)["input_ids"]])  # <s> + the filled template
            losses.append(
                torch.nn.functional.cross_entropy(model(ids).logits[0, -1:], target[None])
            )
        optimizer.zero_grad()
        torch.stack(losses).mean().backward()
        optimizer.step()
    for p in params:
        p.requires_grad_(False)


@pytest.fixture(scope="module")
def planted():
    backbone = tiny_llama(seed=5)
    rows = toy_examples(16, seed=11)
    _plant(backbone, rows)
    data = Dataset("toy", "classification", list(LABELS), rows, rows[:4], rows[:4])
    return backbone, data


def test_search_picks_the_planted_words(planted):
    backbone, data = planted
    printed = []
    task = {"template": TEMPLATE, "verbalizer": "auto"}
    chosen = resolve_verbalizer(backbone, data, task, echo=printed.append)
    assert chosen["verbalizer"] == {label: [word] for label, word in PLANTED.items()}
    assert chosen["template"] == TEMPLATE
    assert "'yes'" in printed[0] and "accuracy 1.000" in printed[0]


def test_auto_n_gives_n_distinct_words_per_class(planted):
    backbone, data = planted
    chosen = resolve_verbalizer(backbone, data, {"template": TEMPLATE, "verbalizer": "auto:3"})
    words = chosen["verbalizer"]
    assert [len(w) for w in words.values()] == [3, 3]
    assert words["positive"][0] == "yes" and not set(words["positive"]) & set(words["negative"])


def test_build_model_uses_the_chosen_words(planted):
    backbone, data = planted
    task = {"template": TEMPLATE, "verbalizer": "auto"}
    model = build_model(backbone, data, {"name": "none"}, task)
    assert model.task.config.verbalizer == {"negative": ["no"], "positive": ["yes"]}


def test_assignment_prefers_shot_accuracy_over_the_best_ratio():
    targets = torch.tensor([0, 0, 1, 1])
    a = Candidate("a", torch.tensor([0.0, 0.0, -9.0, -9.0]), ratio=5.0)
    shared = Candidate("s", torch.tensor([-1.0, -1.0, 0.0, 0.0]), ratio=4.0)
    b_bad = Candidate("b", torch.tensor([-5.0, -5.0, -8.0, -8.0]), ratio=3.0)
    chosen = assign({"x": [a, shared], "y": [shared, b_bad]}, targets)
    assert [c.word for c in chosen] == ["a", "s"]  # never the same word for two classes


def test_a_class_whose_candidates_are_all_taken_is_named():
    """Was a bare StopIteration: the later class's only word is the earlier one's."""
    targets = torch.tensor([0, 1])
    shared = Candidate("s", torch.tensor([0.0, -1.0]), ratio=4.0)
    with pytest.raises(ConfigError, match=r"every candidate word of 'y' \('s'\) is already"):
        best_ratios({"x": [shared], "y": [shared]})
    with pytest.raises(ConfigError, match="every candidate word of 'y'"):
        assign({"x": [shared], "y": [shared]}, targets)


def test_a_class_without_rows_is_named(llama):
    data = Dataset("toy", "classification", list(LABELS), toy_examples(8, 1)[::2], [], [])
    with pytest.raises(ConfigError, match=r"no training rows for label\(s\) \['positive'\]"):
        resolve_verbalizer(llama, data, {"template": TEMPLATE, "verbalizer": "auto"})


def test_slot_templates_choose_with_their_literal_text(planted):
    backbone, data = planted
    slots = "{p:2} review : {p} {text} {p:3} sentiment : {p}"
    assert without_slots(slots) == TEMPLATE
    chosen = resolve_verbalizer(backbone, data, {"template": slots, "verbalizer": "auto"})
    assert chosen == {"template": slots, "verbalizer": {k: [w] for k, w in PLANTED.items()}}


def test_a_linear_head_needs_no_words(bert, llama, toy_dataset):
    assert resolve_verbalizer(bert, toy_dataset, {"verbalizer": "auto"}) == {}
    task = {"head": "linear", "verbalizer": "auto:2"}
    assert resolve_verbalizer(llama, toy_dataset, task) == {"head": "linear"}


def test_lora_baseline_scores_with_the_chosen_words(planted, fast_config, tmp_path):
    backbone, data = planted
    task = {"template": TEMPLATE, "verbalizer": "auto"}
    config = RunConfig(task=task, train=fast_config(steps=1, eval_every=1), out=str(tmp_path))
    model, _ = tuned_baseline(backbone, data, config, TuneConfig(kind="lora"), progress=False)
    assert model.task.config.verbalizer == {k: [w] for k, w in PLANTED.items()}


def test_a_task_config_never_holds_auto():
    with pytest.raises(ConfigError, match=r"task.verbalizer: 'auto' chooses words .*build_model"):
        TaskConfig(labels=list(LABELS), verbalizer="auto")


def test_word_dicts_pass_through_untouched(llama, toy_dataset):
    task = {"verbalizer": {"negative": " bad", "positive": " good"}}
    assert resolve_verbalizer(llama, toy_dataset, task) is task
    assert TaskConfig(labels=list(LABELS)).verbalizer is None


@pytest.mark.parametrize("bad", ["auto:0", "auto:x", "autos", "auto:99"])
def test_bad_auto_value_is_one_line(bad):
    with pytest.raises(ConfigError, match=r"task.verbalizer: .* auto / auto:N"):
        build_run_config({"task": {"verbalizer": bad}})


def test_auto_values_parse():
    assert (parse_auto("auto"), parse_auto(" auto:4 "), parse_auto({"a": "b"})) == (1, 4, None)


def test_own_words_are_kept_unless_the_chosen_ones_do_better_on_validation(planted):
    backbone, data = planted
    config = TaskConfig(labels=list(LABELS), template=TEMPLATE)
    flipped = [Example(e.text, LABELS[1 - LABELS.index(e.label)]) for e in data.train]
    result = search_words(backbone, config, data.train, 1, flipped)
    assert result.kept_own and result.verbalizer == {k: [" " + k] for k in LABELS}
    assert result.checked[0] == 0.0 and "keeping the task's own words" in result.table()
    kept = search_words(backbone, config, data.train, 1, data.train[:6])
    assert not kept.kept_own and kept.verbalizer == {k: [w] for k, w in PLANTED.items()}


def test_validation_rows_pick_the_best_ratios_when_the_ascent_overfits():
    targets = torch.tensor([0, 0, 1, 1, -1, -1, -1, -1])  # rows 4-7 are held out
    checked = torch.tensor([-1, -1, -1, -1, 0, 0, 1, 1])
    a = Candidate("a", torch.tensor([0.0, 0, -1, -1, 0, 0, -5, -5]), ratio=5.0)
    noise = Candidate("u", torch.tensor([0.0, 0, -9, -9, -9, -9, 0, 0]), ratio=1.0)
    b = Candidate("b", torch.tensor([-1.0, -1, 0, 0, -5, -5, 0, 0]), ratio=5.0)
    found = {"x": [a, noise], "y": [b]}
    assert [c.word for c in first_words(found, targets, None)] == ["u", "b"]  # wider margin
    assert [c.word for c in first_words(found, targets, checked)] == ["a", "b"]
