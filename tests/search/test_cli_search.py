"""`softprompt search` end to end on a tiny backbone folder and a small CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from toydata import toy_examples

from softprompt import cli
from softprompt.model import PromptModel, load_prompt_meta

TEMPLATE = "review : {text} sentiment :"


@pytest.fixture(scope="module")
def toy_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "toy.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i, example in enumerate(toy_examples(80, seed=9)):
            writer.writerow([f"{example.text} {i}", example.label])
    return path


def test_search_prints_the_table_and_saves_prompt_files(capsys, llama_folder, toy_csv, tmp_path):
    out = tmp_path / "found"
    argv = ["search", "--backbone", str(llama_folder), "--dataset", str(toy_csv), "--method",
            "autoprompt", "--budget", "12", "--option", "triggers=2", "--template", TEMPLATE,
            "--top", "2", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| # | prompt | validation accuracy | test accuracy | evaluations used |" in printed
    files = sorted(out.glob("autoprompt-seed0-*.safetensors"))
    assert len(files) == 2 and (out / "autoprompt-seed0.json").exists()
    meta = load_prompt_meta(files[0])
    assert meta["method"]["name"] == "none" and meta["search"]["evaluations"] <= 12
    # a found prompt is a prompt file like any other: `softprompt eval` scores it the same
    assert cli.main(["eval", str(files[0]), "--backbone", str(llama_folder), "--dataset",
                     str(toy_csv), "--split", "test"]) == 0  # fmt: skip
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(meta["search"]["test_accuracy"])
    assert evaluated["loss"] == pytest.approx(meta["search"]["test_loss"], abs=1e-5)


def test_project_a_soft_prompt(capsys, llama_folder, toy_csv, tmp_path, llama):
    from softprompt.tasks import TaskConfig

    config = TaskConfig(labels=["negative", "positive"], template=TEMPLATE)
    soft = PromptModel(llama, config, method="soft-prompt",
                       method_options={"n_tokens": 3, "init": "text", "init_text": "good fun movie"})  # fmt: skip
    backbone_path = str(llama_folder)
    from softprompt.backbones import load_backbone

    path = PromptModel(load_backbone(backbone_path), config, method="soft-prompt",
                       method_options=soft.method_options).save(tmp_path / "soft.safetensors")  # fmt: skip
    argv = ["search", "--project", str(path), "--backbone", backbone_path, "--dataset",
            str(toy_csv), "--out", str(tmp_path)]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "projected (cosine)" in printed and "projected (l2)" in printed
    assert "good" in printed and "100%" in printed
    assert (tmp_path / "projected-cosine.safetensors").exists()


def test_bad_option_exits_2_naming_it(capsys, llama_folder, toy_csv):
    argv = ["search", "--backbone", str(llama_folder), "--dataset", str(toy_csv),
            "--option", "triggers"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("softprompt search: error:") and "--option" in err
