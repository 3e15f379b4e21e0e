"""The contract of every registered method on every tiny backbone: only the prompt (and a
task head) trains, the frozen backbone never changes, and prompt files round-trip exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from softprompt.errors import ConfigError, TrainingError
from softprompt.methods import available_methods
from softprompt.model import PromptModel, load_prompt_meta
from softprompt.tasks.classification import HeadTask
from softprompt.train import train

BACKBONES = ["tiny_llama", "tiny_gpt2", "tiny_bert", "tiny_t5", "tiny_bart"]
METHODS = available_methods()
# visual prompts have their own contract tests on tiny vision models (tests/vision/)
UNSUPPORTED = {
    (m, b): f"{m} needs a vision backbone" for m in ("vpt-shallow", "vpt-deep") for b in BACKBONES
}
# DART learns the label tokens a verbalizer scores, and an encoder has no verbalizer
UNSUPPORTED["dart", "tiny_bert"] = "dart learns label tokens"
# ... and an encoder-decoder's decoder scores label words the causal head's way only in part
UNSUPPORTED["dart", "tiny_t5"] = UNSUPPORTED["dart", "tiny_bart"] = "dart learns label tokens"
GRID = [(m, b) for m in METHODS for b in BACKBONES if (m, b) not in UNSUPPORTED]


@pytest.mark.parametrize("method,name", list(UNSUPPORTED))
def test_unsupported_combinations_are_refused_by_name(make_model, backbones, method, name):
    with pytest.raises(ConfigError, match=f"method.name: {UNSUPPORTED[method, name]}"):
        make_model(backbones[name], method)


def test_registry_lists_the_shipped_methods():
    assert {"none", "soft-prompt", "prefix-tuning", "p-tuning"} <= set(METHODS)
    assert METHODS == sorted(METHODS)


def _head_params(model: PromptModel) -> list[torch.nn.Parameter]:
    return list(model.task.parameters()) if isinstance(model.task, HeadTask) else []


@pytest.mark.parametrize("method,name", GRID)
def test_trainable_parameters_are_exactly_method_and_head(make_model, backbones, method, name):
    model = make_model(backbones[name], method)
    expected = {id(p) for p in list(model.method.parameters()) + _head_params(model)}
    got = [id(p) for p in model.trainable_parameters()]
    assert len(got) == len(set(got)) and set(got) == expected
    assert model.num_trainable() == sum(p.numel() for p in model.trainable_parameters())
    backbone_ids = {id(p) for p in backbones[name].model.parameters()}
    assert not backbone_ids & {id(p) for p in model.parameters()}


@pytest.mark.parametrize("method,name", GRID)
def test_state_dict_has_only_trainable_tensors(make_model, backbones, method, name):
    model = make_model(backbones[name], method)
    state = model.state_dict()
    assert sum(t.numel() for t in state.values()) == model.num_trainable()
    assert all(k.startswith(("method.", "task.")) for k in state)
    backbone_keys = set(backbones[name].model.state_dict())
    assert not {k.split(".", 1)[1] for k in state} & backbone_keys


@pytest.mark.parametrize("method,name", GRID)
def test_training_changes_only_prompt_and_head(
    make_model, backbones, method, name, toy_dataset, fast_config, tmp_path
):
    backbone = backbones[name]
    model = make_model(backbone, method)
    if not model.trainable_parameters():  # `none` with label words: zero-shot, no head
        with pytest.raises(TrainingError, match="nothing to train"):
            train(model, toy_dataset, fast_config(), tmp_path, progress=False)
        return
    frozen_before = copy.deepcopy(backbone.model.state_dict())
    trainable_before = {k: v.clone() for k, v in model.state_dict().items()}

    train(model, toy_dataset, fast_config(), tmp_path, progress=False)

    frozen_after = backbone.model.state_dict()
    assert frozen_after.keys() == frozen_before.keys()
    for key, value in frozen_before.items():
        assert torch.equal(frozen_after[key], value), f"backbone tensor {key} changed"
    assert all(p.grad is None and not p.requires_grad for p in backbone.model.parameters())
    assert not any(m.training for m in backbone.model.modules()), (
        "training switched the backbone to train mode"
    )
    for key, value in model.state_dict().items():
        assert not torch.equal(value, trainable_before[key]), f"{key} did not train"


@pytest.mark.parametrize("method,name", GRID)
def test_save_load_round_trip(make_model, backbones, method, name, toy_dataset, tmp_path):
    backbone = backbones[name]
    model = make_model(backbone, method)
    with torch.no_grad():  # make the tensors differ from what a fresh build would give
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    path = model.save(tmp_path / "p.safetensors", dataset="toy", note=[1, 2])
    loaded = PromptModel.load(path, backbone)

    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert loaded.method_name == method
    assert loaded.describe() == model.describe()
    assert loaded.task.config == model.task.config
    batch = model.collate(toy_dataset.test)
    with torch.no_grad():
        a, b = model(batch), loaded(batch)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.loss, b.loss)

    meta = load_prompt_meta(path)
    assert meta["method"]["name"] == method
    assert meta["backbone"] == {
        "name": backbone.name,
        "fingerprint": backbone.fingerprint,
        "dtype": "float32",  # how the frozen weights were held in training (issue 19)
        "quantize": "none",
    }
    assert meta["dataset"] == "toy" and meta["note"] == [1, 2]
    assert meta["tensors"] == {k: list(v.shape) for k, v in model.state_dict().items()}
    assert meta["file_bytes"] == path.stat().st_size
    assert meta["trainable_parameters"] == model.num_trainable()


def test_metadata_round_trip_with_options_and_verbalizer(make_model, llama, tmp_path):
    verbalizer = {"negative": [" bad", " awful"], "positive": " good"}
    model = make_model(
        llama,
        task={"verbalizer": verbalizer, "max_text_tokens": 17, "max_new_tokens": 5},
        n_tokens=3,
        init="text",
        init_text="a great film",
        seed=5,
    )
    path = model.save(tmp_path / "p.safetensors")
    meta = load_prompt_meta(path)
    assert meta["method"]["options"] == {
        "n_tokens": 3,
        "init": "text",
        "init_text": "a great film",
        "init_file": None,
        "seed": 5,
    }
    task = meta["task"]
    assert task["labels"] == ["negative", "positive"]
    assert task["verbalizer"] == {"negative": [" bad", " awful"], "positive": [" good"]}
    assert (task["template"], task["max_text_tokens"], task["max_new_tokens"]) == (
        "review : {text} sentiment :",
        17,
        5,
    )

    loaded = PromptModel.load(path, llama)
    assert loaded.method.config == model.method.config
    assert loaded.task.config.verbalizer == {"negative": [" bad", " awful"], "positive": [" good"]}
    assert torch.equal(loaded.method.embeddings, model.method.embeddings)
