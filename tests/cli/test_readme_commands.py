"""Every `softprompt train` command the README and the docs pages (docs/**/*.md) show
parses into a valid run config, and every YAML in configs/ loads: a renamed flag or
option breaks this test, not a user."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from softprompt import cli
from softprompt.config import build_run_config, load_yaml
from softprompt.tasks.template import Template

ROOT = Path(__file__).resolve().parents[2]


def _readme_train_commands() -> list[str]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    text = "\n".join(page.read_text(encoding="utf-8") for page in pages).replace("\\\n", " ")
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    return [line for line in lines if line.startswith("softprompt train ")]


def test_the_readme_shows_train_commands():
    assert len(_readme_train_commands()) >= 8


@pytest.mark.parametrize("command", _readme_train_commands())
def test_readme_train_command_parses(command, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = shlex.split(command)[1:]
    if "--init-file" in argv:  # a file an earlier command writes: stand one in
        path = tmp_path / "prompt.safetensors"
        path.write_bytes(b"x")
        argv[argv.index("--init-file") + 1] = str(path)
    args = cli.build_parser().parse_args(argv)
    config = cli._config_from_args(args)
    for spec in config.task_specs():
        template = spec.task.get("template")
        if template and "{p" in template:
            assert sum(Template(template).slot_sizes) == spec.method["n_tokens"]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    build_run_config(load_yaml(path))
