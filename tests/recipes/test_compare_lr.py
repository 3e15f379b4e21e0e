"""`softprompt compare` trains each method at its own recommended learning rate (issue
22: at one shared lr, 0.03, prefix tuning and LoRA collapsed on movie-sentiment while
the soft prompt was fine); --lr sets one for every unit, --lr-for one method's; the lr
is in each unit's run config and the table, and a unit trained at another lr is not
read back. A task head beside LoRA, full fine-tuning or a prompt trains at head-only's
lr (or --head-lr)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from tagging_file import write_conll  # tests/recipes/tagging_file.py

from softprompt import cli
from softprompt.config import build_run_config
from softprompt.errors import ConfigError
from softprompt.model import MultiTaskModel, load_prompt_meta
from softprompt.recipes import compare as compare_module
from softprompt.recipes.baselines import RECOMMENDED_LR, TuneConfig, TunedModel, recommended_lr
from softprompt.recipes.compare import CompareConfig, compare
from softprompt.recipes.compare_table import CompareReport
from softprompt.tasks import TaskConfig
from softprompt.train import TrainConfig
from softprompt.train.loop import optimizer_groups

FAST = {"steps": 2, "eval_every": 1, "batch_size": 4, "eval_examples": 8, "lr": 0.1,
        "warmup_steps": 0}  # fmt: skip


def _config(backbone: Path, data: Path, out: Path, methods: list[str], **extra) -> CompareConfig:
    run = build_run_config(
        {"backbone": str(backbone), "data": str(data), "task": {"template": "{text} :"},
         "method": {"name": "soft-prompt", "n_tokens": 2}, "train": FAST, "out": str(out)}
    )  # fmt: skip
    return CompareConfig(run=run, methods=methods, seeds=[0], **extra)


def test_each_method_recommends_its_own_lr_in_one_place():
    assert recommended_lr("soft-prompt") == 3e-2
    assert recommended_lr("prefix-tuning") == 1e-4
    assert recommended_lr("p-tuning") == 1e-3
    assert recommended_lr("lora") == RECOMMENDED_LR["lora"] == 1e-3
    assert recommended_lr("full") == 3e-2 and recommended_lr("head-only") == 1e-2
    assert recommended_lr("zero-shot") is None  # trains nothing


def test_lr_precedence_per_method_override_then_shared_then_recommended():
    run = build_run_config({"train": FAST})  # train.lr 0.1
    shared = CompareConfig(run, methods=["soft-prompt", "lora", "dart"], seeds=[0])
    assert [shared.lr_of(m) for m in shared.methods] == [0.1, 0.1, 0.1]
    own = dataclasses.replace(shared, per_method_lr=True)
    assert [own.lr_of(m) for m in own.methods] == [0.03, 1e-3, 0.1]  # dart names none
    both = dataclasses.replace(own, lr_for={"lora": 3e-4, "dart": 0.5})
    assert [both.lr_of(m) for m in both.methods] == [0.03, 3e-4, 0.5]
    assert dataclasses.replace(shared, lr_for={"lora": 3e-4}).lr_of("lora") == 3e-4


def test_default_lrs_reach_each_unit_config_table_and_a_unit_at_another_lr_is_refused(
    llama_folder, small_csv, tmp_path, monkeypatch
):
    out = tmp_path / "grid"
    config = _config(llama_folder, small_csv, out, ["zero-shot", "lora"], per_method_lr=True)
    report = compare(config, progress=False)
    lora = json.loads((out / "units" / "lora-s0" / "unit.json").read_text())
    assert lora["config"]["train"]["lr"] == 1e-3
    meta = load_prompt_meta(out / "units" / "lora-s0" / "prompt.safetensors")
    assert meta["run"]["train"]["lr"] == 1e-3  # what `eval` of the unit folder reads
    summary = {s["method"]: s for s in report.summary}
    assert summary["lora"]["lr"] == 1e-3 and summary["zero-shot"]["lr"] is None
    saved = json.loads((out / "compare.json").read_text())
    assert saved["config"]["lr"] == {"zero-shot": 0.1, "lora": 1e-3}
    md = (out / "compare.md").read_text()
    assert md.splitlines()[0].endswith("| test time | lr |")
    assert next(x for x in md.splitlines() if x.startswith("| LoRA")).endswith(" s | 0.001 |")
    assert next(x for x in md.splitlines() if x.startswith("| zero-shot")).endswith(" s | - |")

    calls = []
    monkeypatch.setattr(compare_module, "train", lambda *a, **k: calls.append(a))
    assert compare(config, progress=False).summary == report.summary and calls == []
    # the same grid at the shared lr (the old behaviour): lora-s0 was trained at 1e-3
    shared = dataclasses.replace(config, per_method_lr=False)
    with pytest.raises(ConfigError, match=r"lora-s0: .*\(train.lr\); train.lr was 0.001, now 0.1"):
        compare(shared, progress=False)
    assert calls == []


def test_a_stopped_unit_does_not_resume_at_another_lr(llama_folder, small_csv, tmp_path):
    config = _config(llama_folder, small_csv, tmp_path / "g", ["soft-prompt"], per_method_lr=True)
    assert not compare(config, progress=False, stop_at=(0, 1)).complete
    assert (tmp_path / "g" / "units" / "soft-prompt-s0" / "checkpoint.safetensors").is_file()
    other = dataclasses.replace(config, lr_for={"soft-prompt": 0.05})
    with pytest.raises(ConfigError, match=r"train.lr: checkpoint 0.03, now 0.05"):
        compare(other, progress=False)


def _parsed(monkeypatch, tmp_path, *extra: str) -> CompareConfig:
    """The CompareConfig `softprompt compare` builds from these flags (nothing runs)."""
    seen = []

    def fake(config: CompareConfig) -> CompareReport:
        seen.append(config)
        return CompareReport([], [], "accuracy", "peak RSS increase", tmp_path)

    monkeypatch.setattr(compare_module, "compare", fake)
    argv = ["compare", "--out", str(tmp_path / "o"), "--methods", "soft-prompt,lora", *extra]
    assert cli.main(argv) == 0
    return seen[0]


def test_cli_lr_flags(monkeypatch, tmp_path):
    plain = _parsed(monkeypatch, tmp_path)
    assert plain.per_method_lr and [plain.lr_of(m) for m in ("soft-prompt", "lora")] == [
        0.03,
        1e-3,
    ]
    shared = _parsed(monkeypatch, tmp_path, "--lr", "0.05")
    assert [shared.lr_of(m) for m in ("soft-prompt", "lora")] == [0.05, 0.05]
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("train:\n  lr: 0.02\n", encoding="utf-8")
    from_yaml = _parsed(monkeypatch, tmp_path, "--config", str(yaml_file))
    assert [from_yaml.lr_of(m) for m in ("soft-prompt", "lora")] == [0.02, 0.02]
    one = _parsed(monkeypatch, tmp_path, "--lr", "0.05", "--lr-for", "lora=3e-4")
    assert [one.lr_of(m) for m in ("soft-prompt", "lora")] == [0.05, 3e-4]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("bogus=0.1", "--lr-for: unknown method 'bogus'"),
        ("lora", "--lr-for: cannot read 'lora'; write method=lr pairs"),
        ("lora=fast", "--lr-for: cannot read 'lora=fast'"),
        ("lora=-1", "--lr-for: lora's lr must be a finite number > 0, got -1.0"),
        ("lora=nan", "--lr-for: lora's lr must be a finite number > 0, got nan"),
    ],
)
def test_bad_lr_for_is_one_line(value, message, tmp_path, capsys):
    code = cli.main(["compare", "--out", str(tmp_path / "x"), "--lr-for", value])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_a_tagging_head_beside_lora_trains_at_head_onlys_lr(bert_folder, tmp_path):
    """Per-method lrs: LoRA at 1e-3, its tagging head at head-only's 1e-2 (at 1e-3 the
    head barely moved in 30 steps: wnut16 entity F1 0); head-only keeps its one lr."""
    out = tmp_path / "ner"
    run = build_run_config(
        {"backbone": str(bert_folder), "data": str(write_conll(tmp_path / "n.conll")),
         "train": {**FAST, "steps": 1}, "out": str(out)}
    )  # fmt: skip
    config = CompareConfig(run, methods=["head-only", "lora"], seeds=[0], per_method_lr=True)
    report = compare(config, progress=False)
    lora = json.loads((out / "units" / "lora-s0" / "unit.json").read_text())
    assert (lora["config"]["train"]["lr"], lora["config"]["train"]["head_lr"]) == (1e-3, 1e-2)
    meta = load_prompt_meta(out / "units" / "lora-s0" / "prompt.safetensors")
    assert meta["run"]["train"]["head_lr"] == 1e-2
    log = (out / "units" / "lora-s0" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(log[0])["head_lr"] == 1e-2 and json.loads(log[0])["lr"] == 1e-3
    probe = json.loads((out / "units" / "head-only-s0" / "unit.json").read_text())
    assert probe["config"]["train"]["lr"] == 1e-2 and "head_lr" not in probe["config"]["train"]
    summary = {s["method"]: s for s in report.summary}
    assert summary["lora"]["head_lr"] == 1e-2 and "head_lr" not in summary["head-only"]
    assert json.loads((out / "compare.json").read_text())["config"]["head_lr"] == {"lora": 1e-2}
    md = (out / "compare.md").read_text().splitlines()
    assert next(x for x in md if x.startswith("| LoRA")).endswith(" s | 0.001 (head 0.01) |")


def test_a_unit_without_a_head_records_no_head_lr_so_older_units_read_back(
    llama_folder, small_csv, tmp_path
):
    """A verbalizer task has no head: the unit's recorded config has no head_lr, as
    units written before the option, which therefore read back."""
    out = tmp_path / "g"
    config = _config(llama_folder, small_csv, out, ["lora"], per_method_lr=True)
    compare(config, progress=False)
    lora = json.loads((out / "units" / "lora-s0" / "unit.json").read_text())
    assert "head_lr" not in lora["config"]["train"]


def test_cli_head_lr(monkeypatch, tmp_path):
    def head(config: CompareConfig) -> float | None:
        return config.head_lr_of("lora", has_head=True)

    plain = _parsed(monkeypatch, tmp_path)
    assert head(plain) == 1e-2 and plain.head_lr_of("lora", has_head=False) is None
    assert plain.head_lr_of("head-only", has_head=True) is None  # the head is all it trains
    assert head(_parsed(monkeypatch, tmp_path, "--lr", "0.05")) is None  # shared: one lr
    assert head(_parsed(monkeypatch, tmp_path, "--lr", "0.05", "--head-lr", "0.2")) == 0.2
    assert head(_parsed(monkeypatch, tmp_path, "--head-lr", "0.2")) == 0.2
    assert head(_parsed(monkeypatch, tmp_path, "--lr-for", "head-only=0.05")) == 0.05


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_a_tuned_models_head_is_its_own_optimizer_group(bert, kind):
    task = TaskConfig(kind="tagging", labels=["O", "B-team", "I-team"])
    model = TunedModel(bert, task, TuneConfig(kind=kind))
    head = {id(p) for p in model.head_parameters()}
    assert head == {id(p) for p in model.task.head.parameters()}
    rest, heads = optimizer_groups(MultiTaskModel.single("t", model), TrainConfig(head_lr=0.01))
    assert {id(p) for p in heads["params"]} == head and heads["lr"] == 0.01
    assert len(rest["params"]) == len(model.trainable_parameters()) - len(head) > 0
