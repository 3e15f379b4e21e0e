"""Task configs: every bad value is a ConfigError that names the task key."""

from __future__ import annotations

import pytest

from softprompt.errors import ConfigError
from softprompt.tasks import TaskConfig
from softprompt.tasks.classification import HeadTask, VerbalizerTask
from softprompt.tasks.generation import GenerationTask


@pytest.mark.parametrize(
    "values,key",
    [
        ({"kind": "ranking"}, "task.kind"),
        ({"head": "mlp"}, "task.head"),
        ({"pool": "max"}, "task.pool"),
        ({"labels": ["only"]}, "task.labels"),
        ({"verbalizer": {"negative": " bad"}}, "task.verbalizer"),
        (
            {"verbalizer": {"negative": " bad", "positive": " good", "meh": " ok"}},
            "task.verbalizer",
        ),
    ],
)
def test_bad_task_values(values, key):
    with pytest.raises(ConfigError, match=key):
        TaskConfig(**{"labels": ["negative", "positive"], **values})


@pytest.mark.parametrize("template", ["no slot", "{text} and {text}"])
def test_template_needs_one_slot(make_model, llama, template):
    with pytest.raises(ConfigError, match="task.template"):
        make_model(llama, task={"template": template})


def test_task_is_picked_by_kind_head_and_backbone(make_model, llama, gpt2, bert):
    assert isinstance(make_model(llama).task, VerbalizerTask)
    assert isinstance(make_model(gpt2, task={"head": "linear"}).task, HeadTask)
    assert isinstance(make_model(bert).task, HeadTask)
    assert isinstance(make_model(llama, task={"kind": "generation"}).task, GenerationTask)
    with pytest.raises(ConfigError, match="verbalizers need a causal LM"):
        make_model(bert, task={"head": "verbalizer"})
    with pytest.raises(ConfigError, match="generation needs a causal LM"):
        make_model(bert, task={"kind": "generation"})


def test_rows_with_unknown_labels_get_no_targets(make_model, llama):
    from softprompt.data import Example

    model = make_model(llama, task={"head": "linear"})
    batch = model.collate([Example("good", "positive"), Example("bad", "neutral")])
    assert "targets" not in batch  # unlabeled rows (predict) are scored without targets


def test_label_word_without_tokens_is_a_config_error(make_model, llama):
    with pytest.raises(ConfigError, match="task.verbalizer"):
        make_model(llama, task={"verbalizer": {"negative": "  ", "positive": " good"}})
