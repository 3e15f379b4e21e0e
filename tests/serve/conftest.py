"""A store of tiny-llama prompts: two classification methods, zero-shot, and generation."""

from __future__ import annotations

import pytest
import torch

from softprompt.model import PromptModel
from softprompt.serve.engine import Engine
from softprompt.serve.store import PromptStore
from softprompt.tasks import TaskConfig

METHODS = {
    "soft-prompt": {"n_tokens": 3},
    "prefix-tuning": {"n_tokens": 2, "hidden": 8},
    "none": {},
}
TASKS = {  # task -> (method, seed, task options)
    "movie": ("soft-prompt", 1, {}),
    "tweets": ("prefix-tuning", 2, {}),
    "plain": ("none", 0, {}),
    "story": ("soft-prompt", 3, {"kind": "generation", "max_new_tokens": 4}),
}


def trained_looking(backbone, method: str, seed: int, **task) -> PromptModel:
    """A prompt moved away from its init (which may be near zero) by a seeded kick."""
    options = {**METHODS[method], **({"seed": seed} if method != "none" else {})}
    config = TaskConfig(labels=["negative", "positive"], template="review : {text} :", **task)
    model = PromptModel(backbone, config, method=method, method_options=options)
    with torch.no_grad():
        for p in model.method.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
    return model


@pytest.fixture(scope="session")
def trained():
    return trained_looking


@pytest.fixture(scope="module")
def prompt_files(llama, tmp_path_factory):
    """task -> (prompt file path, model) for every task in TASKS."""
    folder = tmp_path_factory.mktemp("prompts")
    out = {}
    for task, (method, seed, options) in TASKS.items():
        model = trained_looking(llama, method, seed, **options)
        out[task] = (model.save(folder / f"{task}.safetensors"), model)
    return out


@pytest.fixture
def store(tmp_path, prompt_files) -> PromptStore:
    store = PromptStore(tmp_path / "store")
    for task, (path, _) in prompt_files.items():
        store.add(task, path)
    return store


@pytest.fixture
def engine(llama, store) -> Engine:
    engine = Engine(llama, store, cache_bytes=1 << 20, max_input_tokens=64)
    engine.load_all()
    return engine
