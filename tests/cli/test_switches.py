"""The run switches set the config keys they name in --help (one table, commands/flags.py
SWITCHES, both adds them and reads them)."""

from __future__ import annotations

from softprompt import cli
from softprompt.commands.flags import _values_from_args


def test_every_switch_sets_its_config_key() -> None:
    argv = ["train", "--bf16", "--gradient-checkpointing", "--fsdp", "--overwrite"]
    args = cli.build_parser().parse_args([*argv, "--chat-template", "--force-resume"])
    values = _values_from_args(args)
    assert values["train"] == {
        "bf16": True,
        "gradient_checkpointing": True,
        "fsdp": True,
        "overwrite": True,
        "force_resume": True,
    }
    assert values["task"] == {"chat_template": True}


def test_switches_not_given_set_nothing() -> None:
    assert _values_from_args(cli.build_parser().parse_args(["train"])) == {}
