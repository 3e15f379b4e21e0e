"""Search options go through the one config checker (issue 18 step 3): each method registers
the dataclass its options are checked against, before any candidate is scored."""

from __future__ import annotations

import pytest
from toydata import LABELS, toy_examples

from softprompt.errors import ConfigError
from softprompt.search import TaskSpec, search
from softprompt.search.base import SEARCHES
from softprompt.search.edits import RandomEditConfig
from softprompt.search.opro import OproConfig


@pytest.fixture(scope="module")
def spec(backbones) -> TaskSpec:
    return TaskSpec(
        backbone=backbones["tiny_llama"],
        labels=list(LABELS),
        template="review : {text} sentiment :",
        examples=toy_examples(8, seed=5),
    )


def test_every_method_names_its_config_class():
    assert SEARCHES.config_class("random-edit") is RandomEditConfig
    assert SEARCHES.config_class("opro") is OproConfig
    assert all(SEARCHES.config_class(name) is not None for name in SEARCHES.names())


def test_flag_strings_are_typed_as_the_config_says():
    config = SEARCHES.config("random-edit", {"vocab": "40", "batch": "2"})
    assert (config.vocab, config.batch, config.max_edits) == (40, 2, 3)
    assert SEARCHES.config("rlprompt", {"lr": "0.25"}).lr == 0.25


def test_every_bad_option_is_named_at_once(spec):
    options = {"vocab": "0", "batch": "many", "colour": 1}
    with pytest.raises(ConfigError) as info:
        search(spec, method="random-edit", budget=5, options=options)
    message = str(info.value)
    assert "search.options.colour: unknown option (known: batch, max_edits, vocab)" in message
    assert "search.options.vocab: must be between 1 and 1000000, got 0" in message
    assert "search.options.batch: expected an integer, got 'many'" in message


def test_a_bad_option_is_refused_before_anything_is_scored(spec, monkeypatch):
    scored = []
    monkeypatch.setattr("softprompt.search.Budget.score", lambda self, c: scored.append(c))
    with pytest.raises(
        ConfigError, match=r"search.options.position: unknown position 'middle'; choose one of"
    ):
        search(spec, method="opro", budget=5, options={"position": "middle"})
    assert scored == []


def test_a_chat_template_task_is_refused_before_any_scoring(tmp_path):
    """The candidate scorer frames bare text; a chat-template task would be scored on
    inputs it never sees, so search refuses it (nothing is loaded or scored first)."""
    from softprompt.search.run import run_search
    from softprompt.tasks import TaskConfig

    task = TaskConfig(labels=["negative", "positive"], chat_template=True)
    with pytest.raises(ConfigError, match="chat-template task"):
        run_search(None, None, task, method="autoprompt", budget=1, seed=0, examples=1,
                   test_examples=1, top=1, options={}, out=tmp_path)  # fmt: skip
