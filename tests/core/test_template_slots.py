"""P-tuning placed anywhere: `{p}` / `{p:N}` slots in a template hold the method's virtual
tokens, in template order; every placement equals a naive forward of the full sequence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softprompt.data import Example
from softprompt.errors import ConfigError
from softprompt.model import MultiTaskModel, PromptModel
from softprompt.tasks import TaskConfig
from softprompt.tasks.template import Template

ATOL = 1e-5
LABELS = ["negative", "positive"]
SLOTTED = "{p:2} review : {text} {p} sentiment :"
ROWS = [Example("a dull plot", "negative"), Example("the movie was really good", "positive")]


def _model(backbone, template=SLOTTED, method="p-tuning", **options) -> PromptModel:
    options = {"n_tokens": 3, **({"hidden": 8} if method == "p-tuning" else {}), **options}
    config = TaskConfig(labels=list(LABELS), template=template)
    return PromptModel(backbone, config, method=method, method_options=options)


def _ids(backbone, text: str) -> list[int]:
    return backbone.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_slots_are_numbered_in_template_order(llama):
    template = Template("{p:2} a {text} b {p} c {p:3}")
    assert template.slot_sizes == [2, 1, 3] and template.n_virtual == 6
    ids, virtual = template.encode_row(llama.tokenizer, "good", 10)
    assert virtual == [0, 1, -1, -1, -1, 2, -1, 3, 4, 5]
    assert [i for i, v in zip(ids, virtual, strict=True) if v < 0] == _ids(llama, "a good b c")
    plain = Template("review : {text} sentiment :")  # no slots: unchanged encoding
    assert plain.encode(llama.tokenizer, "good", 10) == _ids(llama, "review : good sentiment :")


def _naive_sequence(backbone, virtual: torch.Tensor, text: str) -> torch.Tensor:
    """[BOS?] v0 v1 'review :' text v2 'sentiment :' as one embedded row: (1, T, d)."""
    embed = backbone.input_embeddings()
    bos = [backbone.spec.bos_token_id] if backbone.spec.bos_token_id is not None else []
    tokens = lambda s: embed(torch.tensor(_ids(backbone, s)))  # noqa: E731
    parts = [embed(torch.tensor(bos, dtype=torch.long)), virtual[0:2], tokens("review :")]
    parts += [tokens(" " + text), virtual[2:3], tokens(" sentiment :")]
    return torch.cat(parts)[None]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_decoder_slots_equal_naive_sequence_scores_and_gradients(backbones, name):
    backbone = backbones[name]
    model = _model(backbone)
    out = model(model.collate(ROWS))
    out.loss.backward()
    ours = model.method.embeddings.grad.clone()
    model.zero_grad()
    words = torch.tensor(model.task.first_tokens)
    losses = []
    for row, example in enumerate(ROWS):
        virtual = model.method()
        logits = backbone.model(
            inputs_embeds=_naive_sequence(backbone, virtual.embeds, example.text)
        ).logits
        scores = logits[0, -1, words]
        torch.testing.assert_close(out.scores[row], scores, atol=ATOL, rtol=0)
        losses.append(F.cross_entropy(scores[None], torch.tensor([LABELS.index(example.label)])))
    torch.stack(losses).mean().backward()
    torch.testing.assert_close(ours, model.method.embeddings.grad, atol=ATOL, rtol=0)


def test_decoder_head_runs_once_as_the_prompt_prefix(llama):
    """Everything before {text} (virtual tokens and 'review :') never sees the input."""
    model = _model(llama)
    calls = []
    hook = llama.core().register_forward_hook(
        lambda m, a, kw, out: calls.append(kw["inputs_embeds"].shape), with_kwargs=True
    )
    try:
        model(model.collate(ROWS * 4))
    finally:
        hook.remove()
    front = 1 + 2 + len(_ids(llama, "review :"))  # [BOS] v0 v1 review :
    assert calls[0] == torch.Size([1, front, 32]) and calls[1][0] == 8


def test_encoder_slots_equal_naive_splice(bert):
    model = _model(bert)
    with torch.no_grad():
        out = model(model.collate(ROWS))
        virtual = model.method().embeds
        embed = bert.input_embeddings()
        for row, example in enumerate(ROWS):
            sep = embed(torch.tensor([bert.tokenizer.sep_token_id]))  # (1, d)
            # [CLS] (the encoder's front token) v0 v1 review : text v2 sentiment : [SEP]
            inputs = torch.cat([_naive_sequence(bert, virtual, example.text)[0], sep])[None]
            hidden = bert.model(inputs_embeds=inputs).last_hidden_state  # (1, T, d)
            scores = model.task.head(hidden.mean(1))
            torch.testing.assert_close(out.scores[row], scores[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_bert"])
def test_slotted_and_plain_tasks_mix_in_one_batch(backbones, name):
    backbone = backbones[name]
    model = MultiTaskModel(
        {"slots": _model(backbone), "plain": _model(backbone, "review : {text} :", "soft-prompt")}
    )
    items = [("plain", ROWS[0]), ("slots", ROWS[1]), ("plain", ROWS[1]), ("slots", ROWS[0])]
    with torch.no_grad():
        out = model(model.collate(items))
        for task, part in model.collate(items).parts:
            alone = model.models[task](part)
            torch.testing.assert_close(out.outputs[task].scores, alone.scores, atol=ATOL, rtol=0)


def test_generation_with_a_slot_after_the_text(llama):
    task = TaskConfig(
        kind="generation", labels=[], template="{p} text : {text} {p:2} :", max_new_tokens=4
    )
    model = PromptModel(llama, task, method="soft-prompt", method_options={"n_tokens": 3})
    with torch.no_grad():
        model.method.embeddings.mul_(5.0)
        texts = ["good movie", "the plot was really dull"]
        got = model.predict(texts)
        virtual = model.method().embeds
        embed = llama.input_embeddings()
        for text, result in zip(texts, got, strict=True):
            tokens = lambda s: embed(torch.tensor(_ids(llama, s)))  # noqa: E731
            seq = torch.cat([embed(torch.tensor([llama.spec.bos_token_id])), virtual[:1], tokens("text :"),
                             tokens(" " + text), virtual[1:3], tokens(" :")])  # fmt: skip
            out = []
            for _ in range(4):
                token = int(llama.model(inputs_embeds=seq[None]).logits[0, -1].argmax())
                if token == llama.spec.eos_token_id:
                    break
                out.append(token)
                seq = torch.cat([seq, embed(torch.tensor([token]))])
            assert result["text"] == llama.tokenizer.decode(out, skip_special_tokens=True)


def test_slot_errors_name_the_template(llama):
    with pytest.raises(
        ConfigError, match="task.template: its slots hold 3 virtual tokens but the method gives 4"
    ):
        _model(llama, n_tokens=4)
    with pytest.raises(ConfigError, match="key/value prefix"):
        _model(llama, method="prefix-tuning", hidden=8)
    with pytest.raises(ConfigError, match="at least 1"):
        Template("{p:0} {text}")
