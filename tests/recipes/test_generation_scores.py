"""Generation is scored (BLEU, ROUGE-L, exact match) in `eval`, the run report and
`compare`, on a tiny model and a tiny file in the e2e-nlg format."""

from __future__ import annotations

import json

import pytest

from softprompt import cli
from softprompt.data import Example, e2e
from softprompt.evaluate import evaluate
from softprompt.model import PromptModel
from softprompt.tasks import TaskConfig
from softprompt.tasks.text_metrics import generation_metrics, group_references


def _task_json(n: int = 20) -> str:
    examples = [
        {"input": f"name[Place {i}], food[{'fish' if i % 2 else 'rice'}]",
         "target": [f"Place {i} serves {'fish' if i % 2 else 'rice'}.", f"Try Place {i}."]}
        for i in range(n)
    ]  # fmt: skip
    return json.dumps({"examples": examples})


@pytest.fixture
def e2e_home(tmp_path, monkeypatch):
    """SOFTPROMPT_HOME with an e2e-nlg task.json in place (BIG-bench layout)."""
    monkeypatch.setenv("SOFTPROMPT_HOME", str(tmp_path / "home"))
    e2e.cached_task_file().parent.mkdir(parents=True)
    e2e.cached_task_file().write_text(_task_json())
    return tmp_path / "home"


def test_evaluate_decodes_each_distinct_input_once_against_all_its_references(llama):
    rows = [Example("a b", "c d"), Example("b c", "d"), Example("a b", "e f")]
    model = PromptModel(llama, TaskConfig(kind="generation", max_new_tokens=4),
                        method="soft-prompt", method_options={"n_tokens": 2})  # fmt: skip
    plain = evaluate(model, rows, batch_size=2)
    assert "bleu" not in plain  # validation during training does not decode
    scored = evaluate(model, rows, batch_size=2, decode=True)
    inputs, refs = group_references(rows)
    outputs = [p["text"] for p in model.predict(inputs)]
    assert {k: scored[k] for k in ("bleu", "rouge_l", "exact_match")} == generation_metrics(
        outputs, refs
    )
    assert scored["generated_rows"] == 2 and scored["loss"] == plain["loss"]


def test_compare_on_e2e_leads_with_bleu_and_shows_rouge_l(e2e_home, llama_folder, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--backbone", str(llama_folder), "--dataset", "e2e-nlg",
            "--methods", "zero-shot,soft-prompt", "--seeds", "1", "--steps", "2",
            "--eval-every", "2", "--batch-size", "4", "--n-tokens", "2", "--test-limit", "1",
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    saved = json.loads((out / "compare.json").read_text())
    assert saved["metric"] == "bleu" and saved["also"] == ["rouge_l", "exact_match"]
    for unit in saved["units"]:
        assert unit["generated_rows"] == 1 and unit["test_rows"] == 2  # one input, both refs
        assert 0 <= unit["bleu"] <= 100 and 0 <= unit["rouge_l"] <= 100
    soft = next(s for s in saved["summary"] if s["method"] == "soft-prompt")
    assert set(soft["also"]) == {"rouge_l", "exact_match"}
    md = (out / "compare.md").read_text()
    assert "| test BLEU: mean ± sd (min-max) | test ROUGE-L: mean ± sd | test exact match:" in md


def test_train_report_and_eval_print_generation_scores(e2e_home, llama_folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--backbone", str(llama_folder), "--dataset", "e2e-nlg", "--n-tokens", "2",
            "--steps", "2", "--eval-every", "2", "--batch-size", "4", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert "| test BLEU | test ROUGE-L | test exact match |" in report
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert {"bleu", "rouge_l", "exact_match", "loss"} <= set(rows[-1])
    zero = rows[0]  # generation answers untrained too: the template's own greedy text
    assert zero["name"].startswith("zero-shot") and 0 <= zero["bleu"] <= 100
    capsys.readouterr()
    assert cli.main(["eval", str(out / "prompt.safetensors"), "--test-limit", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dataset"] == "e2e-nlg" and 0 <= printed["bleu"] <= 100
