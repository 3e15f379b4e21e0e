"""A method is one file: written anywhere, imported, it is usable by name end to end
(config check, model, a training step, its bounds), with no other file edited; and the
registries find the modules of their package without an import list (issue 18 step 3)."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from softprompt.config import build_run_config
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.interop.peft import PeftAdapterError, export_peft
from softprompt.methods import METHODS, available_methods
from softprompt.model import check_known
from softprompt.registry import Registry
from softprompt.search import search_methods
from softprompt.tasks import TASKS, TaskConfig
from softprompt.train import train

NAME = "scaled-prompt-test"
METHOD_FILE = f'''
"""A test method: n learned vectors times one learned scale."""

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from softprompt.inject import Prompt
from softprompt.methods.registry import MethodContext, register_method


@dataclass
class ScaledConfig:
    BOUNDS: ClassVar[dict[str, tuple[int, int]]] = {{"n_tokens": (1, 8)}}
    n_tokens: int = 3


@register_method("{NAME}", ScaledConfig)
class Scaled(nn.Module):
    summary = "a test method"

    def __init__(self, config: ScaledConfig, context: MethodContext) -> None:
        super().__init__()
        self.config = config
        d = context.backbone.spec.hidden_size
        self.embeddings = nn.Parameter(torch.randn(config.n_tokens, d) * 0.02)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self) -> Prompt:
        return Prompt(embeds=self.embeddings * self.scale)  # (n, d)

    def flatten(self):
        return "soft-prompt", {{"n_tokens": self.config.n_tokens, "init": "random"}}, {{
            "embeddings": (self.embeddings * self.scale).detach()
        }}
'''


@pytest.fixture
def new_method(tmp_path, monkeypatch):
    """The method file above, written to a folder of its own and imported from there."""
    (tmp_path / "my_method.py").write_text(textwrap.dedent(METHOD_FILE), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("my_method")
    yield module
    METHODS._entries.pop(NAME, None)
    sys.modules.pop("my_method", None)


def test_a_method_in_a_new_file_trains_by_name(
    new_method, make_model, llama, toy_dataset, fast_config, tmp_path
):
    assert NAME in available_methods()
    model = make_model(llama, NAME, n_tokens=2)
    assert model.method_name == NAME
    assert {n for n, _ in model.method.named_parameters()} == {"embeddings", "scale"}
    before = model.method.scale.detach().clone()
    frozen = {k: v.clone() for k, v in llama.model.state_dict().items()}
    train(model, toy_dataset, fast_config(steps=1, eval_every=1), tmp_path / "run", progress=False)
    assert not torch.equal(model.method.scale.detach(), before)
    assert all(torch.equal(v, frozen[k]) for k, v in llama.model.state_dict().items())


def test_a_new_methods_options_are_checked_by_its_own_config_class(new_method):
    with pytest.raises(ConfigError, match=r"method.n_tokens: must be between 1 and 8, got 9"):
        build_run_config({"method": {"name": NAME, "n_tokens": 9}})
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) method.colour"):
        build_run_config({"method": {"name": NAME, "colour": 1}})
    task = dataclasses.asdict(TaskConfig(labels=["a", "b"]))
    meta = {"task": task, "method": {"name": NAME, "options": {"n_tokens": 0}}}
    with pytest.raises(SoftPromptError, match=r"method.options.n_tokens: must be between 1 and 8"):
        check_known("p.prompt", meta)


def test_bounds_hold_for_a_method_under_tasks(tmp_path):
    """The bounds once sat in a table keyed by `method.n_tokens`, so `tasks[0].method`
    went unchecked: a million tokens reached the allocator."""
    task = {"name": "a", "data": {"source": "movie-sentiment"}}
    method = {"name": "soft-prompt", "n_tokens": 10**6}
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.method\.n_tokens: must be between 1 and"):
        build_run_config({"tasks": [{**task, "method": method}]})


def test_a_registry_imports_every_module_of_its_package(tmp_path, monkeypatch):
    package = tmp_path / "plugins_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from softprompt.registry import Registry\nTHINGS = Registry('thing', 'thing', __name__)\n"
    )
    for name in ("alpha", "beta"):
        (package / f"{name}.py").write_text(
            f"from plugins_pkg import THINGS\n\n@THINGS.register('{name}', None)\n"
            f"def build(config):\n    return '{name}'\n"
        )
    (package / "_private.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        things: Registry = importlib.import_module("plugins_pkg").THINGS
        assert things.names() == ["alpha", "beta"]
        assert things.build("beta", things.config("beta", {})) == "beta"
        with pytest.raises(ConfigError, match="thing.name: unknown thing 'gamma'; choose one of"):
            things.builder("gamma")
    finally:
        for module in [m for m in sys.modules if m.split(".")[0] == "plugins_pkg"]:
            sys.modules.pop(module)


def test_methods_tasks_and_searches_share_one_registry_type():
    from softprompt.search.base import SEARCHES

    assert all(isinstance(r, Registry) for r in (METHODS, TASKS, SEARCHES))
    assert "soft-prompt" in METHODS.names() and "verbalizer" in TASKS.names()
    assert "autoprompt" in search_methods()


def test_no_import_list_names_the_methods():
    """methods/__init__.py and tasks/__init__.py import none of their method/task modules."""
    for package in ("methods", "tasks"):
        init = Path(importlib.import_module(f"softprompt.{package}").__file__)
        text = init.read_text(encoding="utf-8")
        assert f"from softprompt.{package} import " not in text, package


def test_a_new_method_is_a_source_for_the_file_init(new_method, make_model, llama, tmp_path):
    """`init: file` reads the tokens through methods.transfer_embeddings: here the flat form
    the new method's own `flatten()` gives, with nothing registered anywhere else."""
    source = make_model(llama, NAME, n_tokens=2)
    with torch.no_grad():
        source.method.scale.fill_(3.0)
    path = source.save(tmp_path / "source.safetensors")
    target = make_model(llama, "soft-prompt", n_tokens=2, init="file", init_file=str(path))
    expected = (source.method.embeddings * 3.0).detach()
    torch.testing.assert_close(target.method.embeddings.detach(), expected)


def test_a_new_method_without_a_peft_type_is_refused_by_name(
    new_method, make_model, llama, tmp_path
):
    model = make_model(llama, NAME, n_tokens=2)
    exportable = "soft-prompt, p-tuning, prefix-tuning, multitask-prompt"
    with pytest.raises(
        PeftAdapterError,
        match=f"method '{NAME}' has no PEFT adapter type; exportable: {exportable}",
    ):
        export_peft(model, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
