"""`softprompt compare`: a grid of methods x seeds on one task, each unit a normal run
folder, resumable unit by unit, one table whatever the task kind."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from tagging_file import write_conll  # tests/recipes/tagging_file.py

from softprompt import cli
from softprompt.config import build_run_config
from softprompt.errors import ConfigError
from softprompt.recipes import compare as compare_module
from softprompt.recipes.compare import CompareConfig, compare, sample_test_rows
from softprompt.recipes.compare_table import CompareReport, summarize
from softprompt.train import train

TEMPLATE = "review : {text} sentiment :"
FAST = {"steps": 2, "eval_every": 1, "batch_size": 4, "eval_examples": 8, "lr": 0.1,
        "warmup_steps": 0}  # fmt: skip


def _config(backbone: Path, data: Path, out: Path, methods: list[str], **extra) -> CompareConfig:
    run = build_run_config(
        {"backbone": str(backbone), "data": str(data), "task": {"template": TEMPLATE},
         "method": {"name": "soft-prompt", "n_tokens": 2}, "train": FAST, "out": str(out)}
    )  # fmt: skip
    return CompareConfig(run=run, methods=methods, seeds=[0, 1], **extra)


def _table(report) -> list[tuple]:
    """Everything in the summary that does not depend on the clock or the allocator."""
    keep = ("method", "mean", "sd", "min", "max", "seeds", "trainable_parameters", "skipped")
    return [tuple(s.get(k) for k in keep) for s in report.summary]


def test_compare_classification_end_to_end_and_a_killed_unit_resumes_to_the_same_table(
    llama_folder, small_csv, tmp_path, train_calls
):
    methods = ["zero-shot", "soft-prompt", "lora"]
    whole = compare(_config(llama_folder, small_csv, tmp_path / "a", methods), progress=False)
    assert [s["method"] for s in whole.summary] == methods
    zero, soft, lora = whole.summary
    assert zero["seeds"] == 1 and zero["trainable_parameters"] == 0  # trains nothing: once
    assert soft["seeds"] == lora["seeds"] == 2
    assert 0 < soft["trainable_parameters"] < lora["trainable_parameters"]
    md = (tmp_path / "a" / "compare.md").read_text()
    assert "test accuracy: mean ± sd (min-max)" in md and "peak RSS increase" in md
    assert "LoRA (PEFT, r=8)" in md
    saved = json.loads((tmp_path / "a" / "compare.json").read_text())
    assert len(saved["units"]) == 5 and saved["metric"] == "accuracy"
    assert (tmp_path / "a" / "compare.png").stat().st_size > 1000
    for unit in ("zero-shot-s0", "soft-prompt-s1", "lora-s0"):
        assert (tmp_path / "a" / "units" / unit / "prompt.safetensors").is_file()
    # a finished unit is never resumed: its checkpoint (3x the backbone for full) is gone
    assert not list((tmp_path / "a" / "units").glob("*/checkpoint.safetensors"))

    # killed: two units finish, the third stops after one step (its checkpoint kept)
    config = _config(llama_folder, small_csv, tmp_path / "b", methods)
    partial = compare(config, progress=False, stop_at=(2, 1))
    assert not partial.complete and len(partial.rows) == 2
    assert not (tmp_path / "b" / "compare.md").exists()
    stopped = tmp_path / "b" / "units" / "soft-prompt-s1"
    assert (stopped / "checkpoint.safetensors").is_file() and not (stopped / "unit.json").exists()
    finished = tmp_path / "b" / "units" / "soft-prompt-s0" / "prompt.safetensors"
    before = finished.stat().st_mtime_ns
    calls = train_calls
    calls.clear()  # the rerun's units only
    resumed = compare(config, progress=False)
    assert finished.stat().st_mtime_ns == before  # read back, not trained again
    assert [c[:2] for c in calls] == [
        ("soft-prompt-s1", True),
        ("lora-s0", False),
        ("lora-s1", False),
    ]
    assert resumed.complete and _table(resumed) == _table(whole)


def test_unit_folders_are_normal_runs_that_eval_and_predict_read(
    llama_folder, small_csv, tmp_path, capsys
):
    out = tmp_path / "c"
    config = _config(llama_folder, small_csv, out, ["soft-prompt", "lora"], test_limit=3)
    compare(dataclasses.replace(config, seeds=[0]), progress=False)
    for unit in ("soft-prompt-s0", "lora-s0"):  # a prompt file and a LoRA baseline file
        row = json.loads((out / "units" / unit / "unit.json").read_text())
        assert row["test_rows"] == 3
        prompt = str(out / "units" / unit / "prompt.safetensors")
        assert cli.main(["eval", prompt, "--backbone", str(llama_folder)]) == 0
        assert '"accuracy"' in capsys.readouterr().out
        assert cli.main(["predict", prompt, "a good fun movie"]) == 0
        assert '"label"' in capsys.readouterr().out


def test_changed_settings_refuse_to_read_a_finished_unit_back_until_overwrite(
    llama_folder, small_csv, tmp_path, train_calls
):
    out = tmp_path / "d"
    methods = ["zero-shot", "soft-prompt"]
    compare(dataclasses.replace(_config(llama_folder, small_csv, out, methods), seeds=[0]),
            progress=False)  # fmt: skip
    changed = _config(llama_folder, small_csv, out, methods, test_limit=2)
    changed = dataclasses.replace(changed, seeds=[0])
    message = r"zero-shot-s0: this unit was run with other settings \(test_limit\)"
    with pytest.raises(ConfigError, match=message):
        compare(changed, progress=False)
    calls = train_calls
    calls.clear()  # the rerun's units only
    again = dataclasses.replace(
        changed.run, train=dataclasses.replace(changed.run.train, overwrite=True)
    )
    report = compare(dataclasses.replace(changed, run=again), progress=False)
    assert calls == [("soft-prompt-s0", False, True)]  # trained afresh, not resumed
    assert {r["test_rows"] for r in report.rows} == {2}


def test_cli_compare_on_tagging_with_full_fine_tuning(bert_folder, tmp_path, capsys):
    out = tmp_path / "ner"
    argv = ["compare", "--backbone", str(bert_folder), "--dataset", str(write_conll(tmp_path / "n.conll")),
            "--methods", "zero-shot,head-only,p-tuning,full", "--seeds", "1", "--steps", "2",
            "--eval-every", "2", "--batch-size", "4", "--n-tokens", "2", "--out", str(out),
            "--seed-init"]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert "test entity F1: mean ± sd" in stdout
    assert json.loads((out / "compare.json").read_text())["config"]["seed_init"] is True
    summary = {s["method"]: s for s in json.loads((out / "compare.json").read_text())["summary"]}
    assert summary["zero-shot"]["skipped"].startswith("the task has a head to train")
    assert "| zero-shot (no training) | n/a:" in stdout
    assert summary["full"]["trainable_parameters"] > summary["p-tuning"]["trainable_parameters"]
    assert (
        summary["p-tuning"]["trainable_parameters"] > summary["head-only"]["trainable_parameters"]
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "soft-prompt,bogus"], "--methods: unknown 'bogus'"),
        (["--seeds", "a,b"], "--seeds: expected whole numbers"),
        (["--seeds", "1,1"], "--seeds 1,1: expected distinct seeds"),
        (["--test-limit", "-1"], "--test-limit: must be >= 0"),
        (["--compare", "lora"], "compare: one task at a time"),
        (["--seed", "3"], "--seed: compare trains every seed in --seeds"),
    ],
)
def test_bad_flags_are_one_line(extra, message, tmp_path, capsys):
    code = cli.main(["compare", "--out", str(tmp_path / "x"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_test_sample_is_fixed_and_keeps_order():
    rows = list(range(10))
    assert (
        sample_test_rows(rows, 4) == sample_test_rows(rows, 4) == sorted(sample_test_rows(rows, 4))
    )
    assert sample_test_rows(rows, 0) == rows and sample_test_rows(rows, 50) == rows


def test_cli_compare_on_generation_scores_bleu_and_the_test_loss(llama_folder, tmp_path, capsys):
    data = tmp_path / "gen.csv"
    pairs = [("translate good", "bon"), ("translate bad", "mal")] * 12
    data.write_text("text,label\n" + "".join(f"{t} {i},{o}\n" for i, (t, o) in enumerate(pairs)))
    out = tmp_path / "gen"
    argv = ["compare", "--backbone", str(llama_folder), "--dataset", str(data),
            "--task-kind", "generation", "--methods", "zero-shot,head-only,soft-prompt",
            "--seeds", "1", "--steps", "2", "--eval-every", "2", "--batch-size", "4",
            "--n-tokens", "2", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    summary = {s["method"]: s for s in json.loads((out / "compare.json").read_text())["summary"]}
    assert summary["zero-shot"]["metric"] == "bleu"  # generation is scored on decoded text
    units = json.loads((out / "compare.json").read_text())["units"]
    assert all(u["loss"] > 0 for u in units if "skipped" not in u)
    assert summary["head-only"]["skipped"] == "the task has no head to train"
    assert summary["soft-prompt"]["trainable_parameters"] > 0


def test_few_shot_compare_draws_one_sample_per_seed(llama_folder, small_csv, tmp_path, monkeypatch):
    """Under --shots each seed trains on its own K-shot sample (data seed = data.seed +
    seed), as LM-BFF and PET report few-shot results; every unit is scored on the same
    test rows."""
    config = _config(llama_folder, small_csv, tmp_path / "k", ["soft-prompt"])
    run = dataclasses.replace(config.run, data=dataclasses.replace(config.run.data, shots=2))
    seen: dict[str, tuple] = {}

    def spy(model, dataset, config, out_dir, **kwargs):
        seen[Path(out_dir).name] = (tuple(dataset.train), tuple(dataset.test))
        return train(model, dataset, config, out_dir, **kwargs)

    monkeypatch.setattr(compare_module, "train", spy)
    compare(dataclasses.replace(config, run=run), progress=False)
    (train0, test0), (train1, test1) = seen["soft-prompt-s0"], seen["soft-prompt-s1"]
    assert len(train0) == len(train1) == 4 and set(train0) != set(train1)
    assert test0 == test1
    for seed in (0, 1):
        unit = json.loads(
            (tmp_path / "k" / "units" / f"soft-prompt-s{seed}" / "unit.json").read_text()
        )
        assert unit["config"]["data"]["seed"] == seed and unit["config"]["data"]["shots"] == 2


def test_a_unit_that_diverges_is_its_row_and_the_grid_goes_on(
    llama_folder, small_csv, tmp_path, monkeypatch
):
    """At lr 1e6 LoRA's loss blows up: the guard's TrainingError used to end
    the whole compare (no table for the units that had worked); now the unit reads
    'diverged' with the step, the rest are scored, and a rerun reads it back."""
    config = _config(llama_folder, small_csv, tmp_path / "x", ["zero-shot", "lora"])
    fast = {**FAST, "steps": 12, "eval_every": 4, "lr": 1e6}
    run = build_run_config({**config.run.to_dict(), "train": fast})
    config = dataclasses.replace(config, run=run)
    report = compare(config, progress=False)
    zero, lora = report.summary
    assert zero["seeds"] == 1 and "mean" in zero
    assert lora["diverged"] == 2 and "mean" not in lora
    assert lora["failed"].startswith("training diverged at step ")
    assert "--overwrite" not in lora["failed"]  # the table keeps the reason, not the advice
    md = (tmp_path / "x" / "compare.md").read_text()
    assert "| LoRA (PEFT, r=8) | diverged in 2 of 2 seeds: training diverged at step" in md
    calls = []
    monkeypatch.setattr(compare_module, "train", lambda *a, **k: calls.append(a))
    assert _table(compare(config, progress=False)) == _table(report) and calls == []


def test_seeds_that_diverged_are_counted_beside_the_mean_of_the_rest():
    row = {"method": "lora", "trainable_parameters": 8, "file_bytes": 1024, "train_seconds": 1.0,
           "peak_memory_bytes": 0, "test_seconds": 1.0}  # fmt: skip
    rows = [{**row, "accuracy": 0.5}, {**row, "accuracy": 0.7}, {"method": "lora", "failed": "x"}]
    summary = summarize("lora", rows, "accuracy")
    assert summary["seeds"] == 2 and summary["diverged"] == 1
    assert summary["mean"] == pytest.approx(0.6)
    line = CompareReport(rows, [summary], "accuracy", "peak RSS increase", Path()).markdown()
    assert "| 0.6000 ± 0.1414 (0.5000-0.7000) | 2 (+1 diverged) | 8 |" in line


def test_seed_init_seeds_each_units_init_by_its_seed_alone(
    llama_folder, small_csv, tmp_path, monkeypatch
):
    """By default a unit's seed is its data order and every unit's prompt starts from the
    method's own seed; with seed_init the unit's seed also seeds its prompt (method.seed)
    and LoRA's random A matrices, whatever units ran before it in the process."""
    starts: dict[tuple[str, str], dict] = {}

    def spy(model, dataset, config, out_dir, **kwargs):
        trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        starts[(Path(out_dir).parents[1].name, Path(out_dir).name)] = trained
        return train(model, dataset, config, out_dir, **kwargs)

    monkeypatch.setattr(compare_module, "train", spy)
    methods = ["soft-prompt", "lora"]
    compare(_config(llama_folder, small_csv, tmp_path / "fixed", methods), progress=False)
    seeded = _config(llama_folder, small_csv, tmp_path / "seeded", methods, seed_init=True)
    compare(seeded, progress=False)
    alone = _config(llama_folder, small_csv, tmp_path / "alone", ["lora"], seed_init=True)
    compare(dataclasses.replace(alone, seeds=[1]), progress=False)

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)

    fixed = ("fixed", "soft-prompt-s0"), ("fixed", "soft-prompt-s1")
    assert same(starts[fixed[0]], starts[fixed[1]])
    assert not same(starts[("seeded", "soft-prompt-s0")], starts[("seeded", "soft-prompt-s1")])
    assert same(starts[("seeded", "lora-s1")], starts[("alone", "lora-s1")])
    unit = json.loads((tmp_path / "seeded" / "units" / "soft-prompt-s1" / "unit.json").read_text())
    assert unit["config"]["method"]["seed"] == 1 and unit["config"]["seed_init"] is True
    saved = json.loads((tmp_path / "seeded" / "compare.json").read_text())
    assert saved["config"]["seed_init"] is True


def test_full_fine_tuning_of_quantized_weights_is_na_and_lora_trains_beside_them(
    llama_folder, small_csv, tmp_path
):
    """Before: full fine-tuning on an int8 backbone died inside torchao (`Int8Tensor
    dispatch: ... aten.mul`), on NF4 inside parametrize (may not change the dtype)."""
    config = _config(llama_folder, small_csv, tmp_path / "q", ["lora", "full"])
    backbone = {"name": str(llama_folder), "quantize": "int8"}
    run = build_run_config({**config.run.to_dict(), "backbone": backbone})
    report = compare(dataclasses.replace(config, run=run, seeds=[0]), progress=False)
    lora, full = report.summary
    assert lora["trainable_parameters"] > 0 and "skipped" not in lora
    assert full["skipped"].startswith("full fine-tuning trains every backbone weight, and this")
    assert "int8-quantized (frozen); load it without --quantize, or use lora" in full["skipped"]
