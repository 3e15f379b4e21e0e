"""`--help` names each flag's default, and `softprompt methods` says when to pick each."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import pytest

from softprompt import cli
from softprompt.config import RunConfig
from softprompt.methods import METHODS, available_methods
from softprompt.tasks import TaskConfig


def _config_value(config: RunConfig, key: str) -> Any:
    """A dotted key's default: method options from the default method's config class,
    task options from TaskConfig (RunConfig().task is empty: the preset fills it)."""
    head, _, rest = key.partition(".")
    if head == "method":
        if rest in config.method:
            return config.method[rest]
        return getattr(METHODS.config_class(config.method["name"])(), rest)
    if head == "task":
        return {f.name: f.default for f in dataclasses.fields(TaskConfig)}[rest]
    return getattr(getattr(config, head), rest) if rest else getattr(config, head)


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a.choices, dict)).choices


@pytest.mark.parametrize("key", sorted(cli.FLAG_DEFAULTS))
def test_shown_defaults_are_run_config_defaults(key):
    assert cli.FLAG_DEFAULTS[key] == _config_value(RunConfig(), key)


def test_every_run_flag_with_a_config_default_shows_it():
    config = RunConfig()
    for key, _, _ in cli.FLAGS.values():
        try:
            value = _config_value(config, key)
        except AttributeError:
            continue  # options only some methods have (init_file, lr_scale)
        if value not in (None, [], "{text}"):  # {text}: the built-in presets set templates
            assert key in cli.FLAG_DEFAULTS, f"--help does not show the default of {key}"


def test_train_help_shows_defaults(capsys):
    text = " ".join(_help(capsys, "train").split())  # argparse wraps lines
    assert "--steps STEPS optimizer steps [train.steps; default: 160]" in text
    assert "[train.lr; default: 0.03]" in text and "[data.source; default: movie-sentiment]" in text
    assert "[method.n_tokens; default: 20 with soft-prompt, else the method's]" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_plain_defaults_show_even_without_help_text(capsys):
    search = " ".join(_help(capsys, "search").split())
    assert "--budget BUDGET candidate evaluations (default: 50)" in search
    assert "--seed SEED (default: 0)" in search  # no help text of its own
    evaluate = " ".join(_help(capsys, "eval").split())
    assert "--batch-size BATCH_SIZE (default: 32)" in evaluate


def test_no_help_page_prints_a_meaningless_default():
    for name, parser in _subparsers().items():
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: [])" not in text, name
        assert "(default: False)" not in text, name


def test_methods_prints_one_line_per_method_with_when_to_pick_it(capsys):
    assert cli.main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == available_methods()
    for name, line in zip(available_methods(), lines, strict=True):
        summary = METHODS.builder(name).summary
        assert summary and line.endswith(summary) and "\n" not in summary
    assert any("the default" in line for line in lines if line.startswith("soft-prompt "))
