"""Meta-learned init (recipes/meta_init.py): resumable, usable as `init: file`, checked."""

from __future__ import annotations

import pytest
import torch
from toydata import LABELS, toy_examples

from softprompt import cli
from softprompt.data import Dataset
from softprompt.errors import ConfigError
from softprompt.model import PromptModel, prompt_embeddings
from softprompt.recipes import meta_init as meta_init_module
from softprompt.recipes.meta_init import MetaInitConfig, meta_init
from softprompt.tasks import TaskConfig

METHOD = {"name": "soft-prompt", "n_tokens": 4}


def _source(name: str, seed: int) -> Dataset:
    rows = toy_examples(16, seed=seed)
    return Dataset(name, "classification", list(LABELS), rows, rows[:4], rows[:4])


def _config(**values) -> MetaInitConfig:
    return MetaInitConfig(**{"method": METHOD, "outer_steps": 4, "inner_steps": 2, **values})


SOURCES = [_source("a", 1), _source("b", 2)]


def test_resumed_run_ends_where_an_uninterrupted_one_does(llama, tmp_path, monkeypatch):
    whole = meta_init(llama, SOURCES, _config(), tmp_path / "whole")
    meta_init(llama, SOURCES, _config(), tmp_path / "cut", stop_after=2)
    assert not (tmp_path / "cut" / "prompt.safetensors").exists()
    steps = []
    adapt = meta_init_module._adapt
    monkeypatch.setattr(meta_init_module, "_adapt", lambda *a: steps.append(a[-1]) or adapt(*a))
    resumed = meta_init(llama, SOURCES, _config(), tmp_path / "cut", resume=True)
    assert steps == [2, 3]  # only the outer steps the cut run had not done
    a, b = prompt_embeddings(whole, llama), prompt_embeddings(resumed, llama)
    assert torch.equal(a, b)
    start = PromptModel(
        llama, TaskConfig(labels=list(LABELS)), "soft-prompt", {"n_tokens": 4}
    ).method
    assert not torch.equal(a, start.embeddings.detach().float().cpu())


def test_the_init_starts_a_target_prompt(llama, tmp_path):
    path = meta_init(llama, SOURCES, _config(outer_steps=1), tmp_path)
    options = {"n_tokens": 4, "init": "file", "init_file": str(path)}
    target = PromptModel(llama, TaskConfig(labels=list(LABELS)), "soft-prompt", options)
    assert torch.equal(
        target.method.embeddings.detach().float().cpu(), prompt_embeddings(path, llama)
    )


def test_resume_with_other_settings_is_refused(llama, tmp_path):
    meta_init(llama, SOURCES, _config(), tmp_path, stop_after=1)
    with pytest.raises(ConfigError, match="other meta-init settings"):
        meta_init(llama, SOURCES, _config(inner_lr=0.5), tmp_path, resume=True)
    with pytest.raises(ConfigError, match="pass --resume"):
        meta_init(llama, SOURCES, _config(), tmp_path)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"outer_steps": 0}, "meta_init.outer_steps"),
        ({"inner_steps": 1.5}, "meta_init.inner_steps"),
        ({"batch_size": True}, "meta_init.batch_size"),
        ({"inner_lr": 0}, "meta_init.inner_lr"),
        ({"meta_lr": 1.5}, "meta_init.meta_lr"),
    ],
)
def test_bad_settings_are_refused_in_one_line(values, message):
    with pytest.raises(ConfigError, match=message) as error:
        _config(**values)
    assert "\n" not in str(error.value)


def test_one_source_is_refused(llama, tmp_path):
    with pytest.raises(ConfigError, match="at least 2 source"):
        meta_init(llama, SOURCES[:1], _config(), tmp_path)


# --- the command line -----------------------------------------------------------------


def _csv(path, seed: int):
    lines = ["text,label"] + [
        f"{e.text} {i},{e.label}" for i, e in enumerate(toy_examples(40, seed))
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_meta_init_command_writes_an_init_and_resumes(llama_folder, tmp_path, capsys):
    sources = f"{_csv(tmp_path / 'a.csv', 1)},{_csv(tmp_path / 'b.csv', 2)}"
    argv = ["meta-init", "--sources", sources, "--backbone", str(llama_folder), "--n-tokens", "2",
            "--outer-steps", "2", "--inner-steps", "1", "--out", str(tmp_path / "out")]  # fmt: skip
    assert cli.main(argv) == 0
    assert "--init-file" in capsys.readouterr().out
    assert cli.main(argv) == 2  # the checkpoint is there: no silent restart
    assert "pass --resume" in capsys.readouterr().err
    assert cli.main([*argv, "--resume"]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sources", "movie-sentiment"], "at least 2 source datasets"),
        (["--sources", "a,b", "--meta-lr", "2"], "meta_init.meta_lr"),
        (["--sources", "a,b", "--outer-steps", "0"], "meta_init.outer_steps"),
        (["--sources", "a,b", "--inner-lr", "-1"], "meta_init.inner_lr"),
    ],
)
def test_bad_meta_init_flags_fail_in_one_line(extra, message, capsys):
    assert cli.main(["meta-init", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_negative_counts_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["meta-init", "--sources", "a,b", "--inner-steps", "-1"])
    assert stopped.value.code == 2 and "--inner-steps: must be >= 0" in capsys.readouterr().err
