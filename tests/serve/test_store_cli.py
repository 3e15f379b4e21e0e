"""`softprompt store add|list|show|remove|export` and serve's argument checks."""

from __future__ import annotations

import json

import pytest

from softprompt.cli import main
from softprompt.serve.commands import _backbone_name
from softprompt.serve.store import PromptStore


def test_store_commands_round_trip(tmp_path, prompt_files, capsys):
    root = str(tmp_path / "store")
    movie, tweets = (str(prompt_files[t][0]) for t in ("movie", "tweets"))
    assert main(["store", "--store", root, "add", "movie", movie]) == 0
    assert main(["store", "--store", root, "add", "movie", tweets]) == 0
    assert "movie@2: prefix-tuning classification prompt for tiny-llama" in capsys.readouterr().out
    assert main(["store", "--store", root, "list"]) == 0
    listing = capsys.readouterr().out
    assert "| movie@1 | soft-prompt |" in listing and "| movie@2 | prefix-tuning |" in listing
    assert main(["store", "--store", root, "show", "movie@1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["entry"]["ref"] == "movie@1" and shown["meta"]["method"]["name"] == "soft-prompt"
    out = tmp_path / "exported.safetensors"
    assert main(["store", "--store", root, "export", "movie@2", "--out", str(out)]) == 0
    assert out.read_bytes() == prompt_files["tweets"][0].read_bytes()
    assert main(["store", "--store", root, "remove", "movie@1"]) == 0
    assert [e.ref for e in PromptStore(root).entries()] == ["movie@2"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["show", "movie@9"], "no task 'movie'"),
        (["add", "bad name", "x.safetensors"], "task name 'bad name'"),
        (["add", "movie", "missing.safetensors"], "no such prompt file"),
        (["add", "movie", "."], ".: is a folder, not a prompt file"),
        (["remove", "movie@x"], "version after '@'"),
    ],
)
def test_store_errors_are_one_line_and_exit_2(tmp_path, argv, message, capsys):
    assert main(["store", "--store", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("softprompt store: error:") and message in err and "\n" not in err


def test_serve_picks_the_backbone_the_store_names(tmp_path, prompt_files, trained, gpt2):
    store = PromptStore(tmp_path / "s")
    assert _backbone_name(store, None) == "smollm2-135m"  # empty store: the default
    store.add("movie", prompt_files["movie"][0])
    assert _backbone_name(store, None) == "tiny-llama"
    assert _backbone_name(store, "other") == "other"
    store.add("alien", trained(gpt2, "soft-prompt", 1).save(tmp_path / "g.safetensors"))
    with pytest.raises(Exception, match="--backbone: the store holds prompts for"):
        _backbone_name(store, None)
