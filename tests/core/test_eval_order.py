"""Evaluation scores rows longest first in batches of similar length and puts each row's
scores back in the order the rows came in: sorting changes the batches, never a score."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.data import Example
from softprompt.errors import ConfigError
from softprompt.evaluate import evaluate, length_order, length_sorted_batches

WORDS = "good bad great terrible fun boring movie film plot acting".split()


def _rows(n: int = 13) -> list[Example]:
    """Rows of 1 to 25 words in a scrambled length order, both labels."""
    rows = []
    for i in range(n):
        length = 1 + (i * 7) % 25
        text = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(length))
        rows.append(Example(text, "positive" if i % 2 else "negative"))
    return rows


def test_length_order_is_longest_first_and_stable():
    rows = [Example("aa", "x"), Example("a", "x"), Example("bbb", "x"), Example("bb", "x")]
    assert length_order(rows) == [2, 0, 3, 1]
    batches = length_sorted_batches(rows, 3)
    assert [[e.text for e in b] for b in batches] == [["bbb", "aa", "bb"], ["a"]]


@pytest.mark.parametrize("backbone", ["llama", "gpt2", "bert"])
def test_sorted_and_unsorted_give_the_same_scores_per_row(make_model, backbone, request):
    model = make_model(request.getfixturevalue(backbone), n_tokens=4)
    rows = _rows()
    assert length_order(rows) != list(range(len(rows)))  # sorting does reorder them
    got = evaluate(model, rows, batch_size=4, keep_scores=True)
    plain = evaluate(model, rows, batch_size=4, sort=False, keep_scores=True)
    alone = [evaluate(model, [r], batch_size=1, keep_scores=True)["scores"][0] for r in rows]
    assert len(got["scores"]) == len(rows)
    torch.testing.assert_close(
        torch.tensor(got["scores"]), torch.tensor(plain["scores"]), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        torch.tensor(got["scores"]), torch.tensor(alone), atol=1e-5, rtol=1e-5
    )
    assert got["accuracy"] == plain["accuracy"] and got["examples"] == 13
    assert got["loss"] == pytest.approx(plain["loss"], abs=1e-6)


def test_auto_batch_size_gives_the_same_figures(make_model, llama):
    model = make_model(llama, n_tokens=4)
    rows = _rows()
    auto = evaluate(model, rows, batch_size="auto")
    fixed = evaluate(model, rows, batch_size=5)
    assert auto["accuracy"] == fixed["accuracy"]
    assert auto["loss"] == pytest.approx(fixed["loss"], abs=1e-6)
    with pytest.raises(ConfigError, match="integer >= 1 or auto"):
        evaluate(model, rows, batch_size="big")


def test_progress_bar_names_split_and_task_and_counts_rows(make_model, llama, capsys):
    model = make_model(llama, n_tokens=4)
    evaluate(model, _rows(), batch_size=4, progress=True, desc="test toy")
    err = capsys.readouterr().err
    assert "test toy" in err and "/13" in err and "row/s" in err  # rows, with an ETA


def test_cli_eval_auto_batch_size_matches_a_fixed_one(llama_folder, tmp_path, capsys):
    from softprompt.backbones import load_backbone
    from softprompt.cli import main
    from softprompt.model import PromptModel
    from softprompt.tasks import TaskConfig

    data = tmp_path / "toy.csv"
    lines = ["text,label"] + [f"{e.text},{e.label}" for e in _rows(40)]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    task = TaskConfig(labels=["negative", "positive"], template="review : {text} sentiment :")
    model = PromptModel(load_backbone(str(llama_folder)), task, "soft-prompt", {"n_tokens": 4})
    prompt = str(model.save(tmp_path / "p.safetensors", dataset=str(data)))
    results = []
    for size in ("auto", "3"):
        assert main(["eval", prompt, "--split", "test", "--batch-size", size]) == 0
        out, err = capsys.readouterr()
        assert f"test {data}" in err  # the bar names the split and the data
        results.append(json.loads(out))
    assert results[0]["accuracy"] == results[1]["accuracy"]
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], abs=1e-6)
