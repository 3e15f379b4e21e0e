"""`train --chat-template` (task.chat_template): refused up front on a backbone without
one; on one with a chat template the run trains, and `predict` frames its input the same
way from the prompt file alone."""

from __future__ import annotations

import json

from softprompt import cli
from softprompt.backbones.tiny import tiny_llama
from softprompt.model import PromptModel, load_prompt_meta

CHAT = (
    "{{ bos_token }}{% for m in messages %}you : {{ m['content'] }} . {% endfor %}"
    "{% if add_generation_prompt %}answer :{% endif %}"
)


def _train(folder, csv, out, *extra):
    return cli.main(
        ["train", "--backbone", str(folder), "--dataset", str(csv), "--method", "soft-prompt",
         "--n-tokens", "2", "--steps", "2", "--eval-every", "2", "--batch-size", "4",
         "--no-baseline", "--out", str(out), "--chat-template", *extra]
    )  # fmt: skip


def test_a_backbone_without_a_chat_template_is_refused(
    capsys, tmp_path, tiny_backbone_folder, small_csv
):
    assert _train(tiny_backbone_folder, small_csv, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "task.chat_template" in err and "has no chat template" in err


def test_train_and_predict_inside_the_chat_template(capsys, tmp_path, small_csv):
    backbone = tiny_llama()
    backbone.tokenizer.chat_template = CHAT
    folder = tmp_path / "chat-llama"
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    out = tmp_path / "run"
    assert _train(folder, small_csv, out, "--chat-system", "movie review") == 0
    prompt = out / "prompt.safetensors"
    task = load_prompt_meta(prompt)["task"]
    assert (task["chat_template"], task["chat_system"]) == (True, "movie review")
    capsys.readouterr()
    assert cli.main(["predict", str(prompt), "good movie", "--backbone", str(folder)]) == 0
    got = json.loads(capsys.readouterr().out.splitlines()[0])
    want = PromptModel.load(prompt, backbone).predict(["good movie"])[0]  # rendered: tested
    assert got["label"] == want["label"]
