"""task.chat_template: the input rendered by the backbone tokenizer's chat template, in
training batches, evaluation and predict alike (served chat: tests/serve/test_chat.py)."""

from __future__ import annotations

import pytest
import torch

from softprompt.backbones.tiny import tiny_gpt2, tiny_llama
from softprompt.data import Example
from softprompt.errors import ConfigError
from softprompt.model import PromptModel
from softprompt.tasks import TaskConfig
from softprompt.tasks.chat import Conversation, render
from softprompt.train import train

# Role names in the tiny word vocabulary, so every rendered token is a real one.
CHAT = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}you{% elif m['role'] == 'assistant' %}i{% else %}topic{% endif %}"
    " : {{ m['content'] }} . {% endfor %}{% if add_generation_prompt %}answer :{% endif %}"
)
# What CHAT renders one user message as (BOS left out: every row gets BOS in front).
RENDERED = "you : {text} . answer :"
LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def chat_llama():
    """A tiny llama of its own (the session's is shared) whose tokenizer has a chat template."""
    backbone = tiny_llama()
    backbone.tokenizer.chat_template = CHAT
    return backbone


def _pair(backbone, **task):
    """The same seeded prompt with the chat template on, and with its rendering written out
    as a plain template: what the option must be equal to."""
    options = {"n_tokens": 3, "seed": 4}
    chat = TaskConfig(labels=LABELS, template="{text}", chat_template=True, **task)
    plain = TaskConfig(labels=LABELS, template=RENDERED, **task)
    return (
        PromptModel(backbone, chat, method="soft-prompt", method_options=options),
        PromptModel(backbone, plain, method="soft-prompt", method_options=options),
    )


@pytest.mark.parametrize("kind", ["classification", "generation"])
def test_batches_are_the_rendered_conversation(chat_llama, kind):
    chat, plain = _pair(chat_llama, kind=kind)
    label = "positive" if kind == "classification" else "good movie"
    examples = [Example("good movie", label), Example("the plot was dull", label)]
    a, b = chat.task.collate(examples), plain.task.collate(examples)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (
        chat.task.contexts(examples)[0]
        == chat_llama.tokenizer("you : good movie . answer :", add_special_tokens=False)[
            "input_ids"
        ]
    )


def test_predict_and_save_load_keep_the_option(chat_llama, tmp_path):
    chat, plain = _pair(chat_llama)
    got, want = chat.predict(["good movie"]), plain.predict(["good movie"])
    assert got[0]["label"] == want[0]["label"]
    assert got[0]["scores"] == pytest.approx(want[0]["scores"], abs=1e-6)
    loaded = PromptModel.load(chat.save(tmp_path / "chat.safetensors"), chat_llama)
    assert loaded.task.config.chat_template is True
    assert loaded.predict(["good movie"])[0]["scores"] == pytest.approx(got[0]["scores"])


def test_training_and_evaluation_see_the_rendered_rows(
    chat_llama, toy_dataset, fast_config, tmp_path
):
    """The same seeded run with the option and with its rendering written out ends with the
    same prompt and the same validation figures."""
    results = []
    for i, model in enumerate(_pair(chat_llama)):
        result = train(model, toy_dataset, fast_config(steps=2), tmp_path / str(i), progress=False)
        results.append((model, result))
    (chat, a), (plain, b) = results
    for p, q in zip(chat.method.parameters(), plain.method.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)
    assert a.best_metric == pytest.approx(b.best_metric)


def test_a_conversation_is_taken_as_rendered_and_cut_from_the_front(chat_llama):
    chat, _ = _pair(chat_llama, max_text_tokens=6)
    turns = [
        {"role": "system", "content": "movie review"},
        {"role": "user", "content": "bad"},
        {"role": "assistant", "content": "negative"},
        {"role": "user", "content": "good movie"},
    ]
    text = render(chat_llama.tokenizer, turns, drop_bos=True)
    assert isinstance(text, Conversation) and not text.startswith("<s>")
    ids = chat.task.contexts([Example(text, "")])[0]
    whole = chat_llama.tokenizer(str(text), add_special_tokens=False)["input_ids"]
    assert ids == whole[-6:]  # the latest turn and the assistant's header are kept


def test_slots_sit_where_the_template_puts_them(chat_llama):
    config = TaskConfig(labels=LABELS, template="{text} {p:2}", chat_template=True)
    model = PromptModel(chat_llama, config, method="p-tuning", method_options={"n_tokens": 2})
    ids, virtual = model.task.rows([Example("good", "")])
    assert virtual[0][-2:] == [0, 1] and all(v == -1 for v in virtual[0][:-2])
    assert (
        ids[0][:-2]
        == chat_llama.tokenizer("you : good . answer :", add_special_tokens=False)["input_ids"]
    )
    assert model.predict(["good"])[0]["label"] in LABELS  # no slot in front: nothing there


def test_slots_only_after_the_text_run_without_a_chat_template(llama):
    """A bug the option showed: with every slot after {text} the decoder's front prompt was
    an empty torch.cat (ValueError) on any backbone."""
    config = TaskConfig(labels=LABELS, template="{text} {p:2}")
    model = PromptModel(llama, config, method="p-tuning", method_options={"n_tokens": 2})
    assert model.predict(["good"])[0]["label"] in LABELS


def test_a_system_message_goes_before_the_users(chat_llama):
    options = {"n_tokens": 2, "seed": 1}
    system = TaskConfig(labels=LABELS, chat_template=True, chat_system="movie review")
    plain = TaskConfig(labels=LABELS, template="topic : movie review . " + RENDERED)
    a = PromptModel(chat_llama, system, method="soft-prompt", method_options=options)
    b = PromptModel(chat_llama, plain, method="soft-prompt", method_options=options)
    examples = [Example("good movie", "positive")]
    assert a.task.contexts(examples) == b.task.contexts(examples)
    own = a.task.conversation(
        [{"role": "system", "content": "news"}, {"role": "user", "content": "good"}]
    )
    assert own == "topic : news . you : good . answer :"  # the client's system message wins
    assert a.task.conversation([{"role": "user", "content": "good"}]).startswith(
        "topic : movie review . you : good"
    )


def test_a_tokenizer_without_a_chat_template_is_refused(llama, bert):
    config = TaskConfig(labels=LABELS, chat_template=True)
    with pytest.raises(ConfigError, match="has no chat template"):
        PromptModel(llama, config, method="soft-prompt", method_options={"n_tokens": 2})
    with pytest.raises(ConfigError, match="needs a causal LM"):
        PromptModel(bert, config, method="soft-prompt", method_options={"n_tokens": 2})


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"chat_template": "yes"}, "must be true or false"),
        ({"kind": "tagging", "chat_template": True}, "tagging labels each word"),
        ({"chat_system": "be brief"}, "needs task.chat_template: true"),
        ({"chat_template": True, "chat_system": 3}, "chat_system: must be a string"),
    ],
)
def test_bad_options_are_refused(options, says):
    with pytest.raises(ConfigError, match=says):
        TaskConfig(labels=LABELS, **options)


def test_roles_are_checked_before_rendering(chat_llama):
    with pytest.raises(ConfigError, match=r"messages\[0\].role"):
        render(chat_llama.tokenizer, [{"role": "tool", "content": "x"}], drop_bos=True)


def test_the_position_check_counts_and_names_the_chat_wrapper(make_model):
    """A GPT-2 (512 learned positions) whose prompt fills them exactly with the bare
    template: wrapping the same input in a chat template (and a system message) must be
    refused, its extra tokens named apart, and the largest accepted prompt must run."""
    backbone = tiny_gpt2()
    backbone.tokenizer.chat_template = CHAT
    chat_task = {"template": "{text}", "max_text_tokens": 40}
    refused = _needed(make_model, backbone, chat_task)  # positions the bare rows need
    fits = make_model(backbone, n_tokens=512 - refused + 500, task=chat_task)
    assert fits is not None  # exactly 512 positions without the wrapper
    chat_task.update(chat_template=True, chat_system="topic : good")
    # "<|endoftext|>topic : topic : good . you : {text} . answer :": GPT-2 rows get no
    # BOS in front, so the template's BOS text stays, and 11 words: 12 tokens
    wrapper = 12
    with pytest.raises(ConfigError, match="512 positions") as error:
        make_model(backbone, n_tokens=512 - refused + 500, task=chat_task)
    message = str(error.value)
    assert f"{wrapper} chat-template tokens" in message
    assert f"can need {512 + wrapper} " in message
    assert "task.chat_system" in message
    model = make_model(backbone, n_tokens=512 - refused + 500 - wrapper, task=chat_task)
    with torch.no_grad():
        model(model.collate([Example(" ".join(["good"] * 300), "positive")]))


def _needed(make_model, backbone, task) -> int:
    """Positions a 500-token prompt with `task` needs (read off the refusal)."""
    with pytest.raises(ConfigError, match="512 positions") as refused:
        make_model(backbone, n_tokens=500, task=task)
    return int(str(refused.value).split("can need ")[1].split()[0])
