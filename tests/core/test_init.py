"""Prompt initialisers: shapes, what each one copies from the embedding table, and errors."""

from __future__ import annotations

import pytest
import torch

from softprompt import init as prompt_init
from softprompt.errors import ConfigError, PromptFileError
from softprompt.methods.soft_prompt import SoftPromptConfig

NAMES = ["tiny_llama", "tiny_gpt2", "tiny_bert"]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _table(backbone) -> torch.Tensor:
    return backbone.input_embeddings().weight.detach()


def _ids(backbone, text: str) -> list[int]:
    return backbone.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("init", ["random", "vocab", "text", "labels"])
@pytest.mark.parametrize("n", [1, 7])
def test_shapes(backbones, name, init, n):
    backbone = backbones[name]
    out = prompt_init.initialize(
        init,
        n_tokens=n,
        backbone=backbone,
        generator=_gen(),
        text="a good movie",
        label_token_ids=[[5], [6, 7]],
    )
    assert out.shape == (n, backbone.spec.hidden_size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_random_matches_the_table_scale_and_is_seeded(backbones, name):
    backbone = backbones[name]
    out = prompt_init.init_random(backbone, 100, _gen(1))
    std = _table(backbone).float().std().item()
    assert out.std().item() == pytest.approx(std, rel=0.1)
    assert torch.equal(out, prompt_init.init_random(backbone, 100, _gen(1)))
    assert not torch.equal(out, prompt_init.init_random(backbone, 100, _gen(2)))


@pytest.mark.parametrize("name", NAMES)
def test_vocab_rows_are_non_special_embeddings(backbones, name):
    backbone = backbones[name]
    table = _table(backbone)
    out = prompt_init.init_vocab(backbone, 50, _gen(3))
    special = set(backbone.tokenizer.all_special_ids)
    for row in out:
        matches = [i for i in range(table.shape[0]) if torch.equal(table[i], row)]
        assert matches and not set(matches) & special
    assert len({tuple(r.tolist()) for r in out}) > 10  # sampled, not one row repeated
    assert torch.equal(out, prompt_init.init_vocab(backbone, 50, _gen(3)))


@pytest.mark.parametrize("name", NAMES)
def test_text_repeats_the_text_token_embeddings(backbones, name):
    backbone = backbones[name]
    table = _table(backbone)
    good, movie = _ids(backbone, "good movie")
    out = prompt_init.init_text(backbone, 5, _gen(), text="good movie")
    assert torch.equal(out, table[[good, movie, good, movie, good]])
    assert torch.equal(prompt_init.init_text(backbone, 1, _gen(), text="good movie"), table[[good]])


@pytest.mark.parametrize("name", NAMES)
def test_labels_put_label_word_embeddings_first(backbones, name):
    backbone = backbones[name]
    table = _table(backbone)
    neg, very, good = _ids(backbone, "bad very good")
    out = prompt_init.init_labels(backbone, 4, _gen(), label_token_ids=[[neg], [very, good]])
    assert torch.equal(out[0], table[neg])
    torch.testing.assert_close(out[1], (table[very] + table[good]) / 2)
    special = set(backbone.tokenizer.all_special_ids)
    for row in out[2:]:  # the rest: sampled vocabulary rows
        assert any(torch.equal(table[i], row) for i in range(table.shape[0]) if i not in special)
    # fewer tokens than classes: the first classes only
    assert torch.equal(
        prompt_init.init_labels(backbone, 1, _gen(), label_token_ids=[[neg], [good]]), table[[neg]]
    )


def test_soft_prompt_labels_init_uses_the_verbalizer(make_model, llama):
    model = make_model(
        llama,
        task={"verbalizer": {"negative": " bad", "positive": [" great", " good"]}},
        n_tokens=3,
        init="labels",
    )
    table = _table(llama)
    bad, great = _ids(llama, "bad great")
    assert torch.equal(model.method.embeddings.detach()[:2], table[[bad, great]])


@pytest.mark.parametrize("text", ["", "   ", None])
def test_text_init_needs_text(llama, text):
    with pytest.raises(ConfigError, match="init_text"):
        prompt_init.init_text(llama, 3, _gen(), text=text)


def test_labels_init_needs_label_words(llama, bert, make_model):
    with pytest.raises(ConfigError, match="label words"):
        prompt_init.init_labels(llama, 3, _gen(), label_token_ids=[])
    with pytest.raises(ConfigError, match="label words"):
        prompt_init.initialize("labels", n_tokens=3, backbone=llama, generator=_gen())
    with pytest.raises(ConfigError, match="label words"):  # a linear head has no label words
        make_model(bert, init="labels")


def test_unknown_init_and_bad_options():
    with pytest.raises(ConfigError, match="method.init.*'bogus'"):
        prompt_init.initialize("bogus", n_tokens=2, backbone=None, generator=_gen())
    with pytest.raises(ConfigError, match="method.init"):
        SoftPromptConfig(init="bogus")
    with pytest.raises(ConfigError, match="method.init_text"):
        SoftPromptConfig(init="text")
    with pytest.raises(ConfigError, match="method.n_tokens"):
        SoftPromptConfig(n_tokens=0)


def test_unknown_method_option_is_named(make_model, llama):
    with pytest.raises(ConfigError, match="method.n_tokns"):
        make_model(llama, n_tokns=3)
    with pytest.raises(ConfigError, match="unknown method 'prefix-nope'"):
        make_model(llama, method="prefix-nope")


def test_method_seed_changes_the_initial_prompt(make_model, llama):
    a = make_model(llama, n_tokens=6, seed=0).method.embeddings
    b = make_model(llama, n_tokens=6, seed=0).method.embeddings
    c = make_model(llama, n_tokens=6, seed=1).method.embeddings
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_file_init_starts_from_another_prompt_file(make_model, llama, bert, tmp_path):
    source = make_model(llama, n_tokens=3, seed=4)
    path = source.save(tmp_path / "source.safetensors")
    same = make_model(llama, n_tokens=3, init="file", init_file=str(path))
    assert torch.equal(same.method.embeddings, source.method.embeddings)
    longer = make_model(llama, n_tokens=5, init="file", init_file=str(path))
    assert torch.equal(longer.method.embeddings[:3], source.method.embeddings)
    # a p-tuning file starts the soft prompt at the tokens its encoder produces
    ptuned = make_model(llama, "p-tuning", n_tokens=2, hidden=8)
    ppath = ptuned.save(tmp_path / "ptuned.safetensors")
    with torch.no_grad():
        expected = ptuned.prompt().embeds
    from_p = make_model(llama, n_tokens=2, init="file", init_file=str(ppath))
    torch.testing.assert_close(from_p.method.embeddings, expected)
    # a file for other weights is refused by the fingerprint check
    with pytest.raises(PromptFileError, match="made for backbone"):
        make_model(bert, n_tokens=3, init="file", init_file=str(path))
    with pytest.raises(ConfigError, match="method.init_file: required"):
        make_model(llama, n_tokens=3, init="file")
