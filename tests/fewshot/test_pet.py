"""PET / iPET (recipes/pet.py) and the soft targets its distillation trains on."""

from __future__ import annotations

import json

import pytest
import torch
from toydata import LABELS, TEMPLATE, toy_examples

from softprompt import cli
from softprompt.data import Dataset, Example
from softprompt.data.soft import SoftExample, soft_example
from softprompt.errors import ConfigError, DataError
from softprompt.model import PromptModel
from softprompt.recipes.pet import PetConfig, pattern_grid, pet, soft_labels
from softprompt.tasks import TaskConfig
from softprompt.train import train

PATTERNS = [{"template": TEMPLATE}, {"template": "{text} . it was"}]


def _dataset() -> Dataset:
    return Dataset(
        name="toy",
        task="classification",
        labels=list(LABELS),
        train=toy_examples(8, seed=1),
        validation=toy_examples(8, seed=2),
        test=toy_examples(8, seed=3),
    )


def _model(backbone, template: str = TEMPLATE, seed: int = 0) -> PromptModel:
    torch.manual_seed(seed)
    task = TaskConfig(labels=list(LABELS), template=template)
    return PromptModel(backbone, task, method="soft-prompt", method_options={"n_tokens": 4})


def test_distillation_target_is_the_ensemble_mean(llama):
    members = [_model(llama, p["template"], seed=i) for i, p in enumerate(PATTERNS)]
    texts = [e.text for e in toy_examples(5, seed=9)]
    rows = soft_labels(members, texts, batch_size=4)
    with torch.no_grad():
        each = [m(m.collate([Example(t, "") for t in texts])).scores.softmax(-1) for m in members]
    expected = torch.stack(each).mean(0)  # (N, C)
    got = torch.tensor([r.probs for r in rows])
    assert torch.allclose(got, expected, atol=1e-5)
    assert [r.label for r in rows] == [LABELS[i] for i in expected.argmax(-1)]


def test_soft_targets_train_only_the_prompt_and_lower_the_loss(llama, fast_config, tmp_path):
    model = _model(llama)
    teacher = [0.9, 0.1]
    soft = [soft_example(e.text, LABELS, teacher) for e in toy_examples(16, seed=1)]
    data = Dataset("toy", "classification", list(LABELS), soft, toy_examples(8, 2), [])
    before = {k: v.clone() for k, v in llama.model.state_dict().items()}
    batch = model.collate(soft[:8])
    assert torch.equal(batch["soft_targets"], torch.tensor([teacher] * 8))
    with torch.no_grad():
        start = model(batch).loss.item()
    prompt = [p.detach().clone() for p in model.trainable_parameters()]
    train(model, data, fast_config(steps=12, eval_every=12), tmp_path, progress=False)
    with torch.no_grad():
        assert model(batch).loss.item() < start
    after = llama.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # backbone bit-identical
    assert any(
        not torch.equal(a, b) for a, b in zip(prompt, model.trainable_parameters(), strict=True)
    )
    assert all(not p.requires_grad for p in llama.model.parameters())


def test_soft_loss_is_the_hard_loss_for_one_hot_rows(llama):
    model = _model(llama)
    rows = toy_examples(6, seed=4)
    with torch.no_grad():
        hard = model(model.collate(rows)).loss
        one_hot = [
            SoftExample(e.text, e.label, tuple(float(e.label == c) for c in LABELS)) for e in rows
        ]
        soft = model(model.collate(one_hot)).loss
    assert soft.item() == pytest.approx(hard.item(), rel=1e-5)


def test_pet_writes_every_stage_and_scores_them(llama, fast_config, tmp_path):
    unlabelled = [e.text for e in toy_examples(12, seed=7)]
    config = PetConfig(
        patterns=PATTERNS,
        method={"name": "soft-prompt", "n_tokens": 4},
        train=fast_config(steps=2, eval_every=2),
        generations=1,
        growth=1,
    )
    result = pet(llama, _dataset(), unlabelled, config, tmp_path, progress=False)
    for folder in ("patterns/0", "patterns/1", "generations/1/patterns/1", "distilled"):
        assert (tmp_path / folder / "prompt.safetensors").is_file()
    names = [r["name"] for r in result.rows]
    assert names[-1] == "distilled" and "generation 0 ensemble (mean)" in names
    assert "generation 1 ensemble (mean)" in names
    labels = [json.loads(line) for line in (tmp_path / "labels-1.jsonl").read_text().splitlines()]
    assert len(labels) == 12 and all(abs(sum(r["probs"]) - 1) < 1e-4 for r in labels)
    assert "| distilled |" in (tmp_path / "report.md").read_text()


def test_pattern_grid_is_templates_times_verbalizers():
    words = [{"negative": ["bad"], "positive": ["good"]}, None]
    grid = pattern_grid(["a {text}", "b {text}"], words)
    assert len(grid) == 4 and grid[0] == {"template": "a {text}", "verbalizer": words[0]}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"patterns": PATTERNS[:1]}, "at least 2 patterns"),
        ({"generations": -1}, "pet.generations"),
        ({"growth": 0}, "pet.growth"),
        ({"unlabelled_limit": 1.5}, "pet.unlabelled_limit"),
        ({"distill_pattern": 2}, "pet.distill_pattern"),
    ],
)
def test_bad_pet_settings_are_refused_in_one_line(values, message):
    with pytest.raises(ConfigError, match=message) as error:
        PetConfig(**{"patterns": PATTERNS, **values})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("probs", [[0.5], [0.7, 0.7], [float("nan"), 1.0], [-0.1, 1.1]])
def test_bad_soft_labels_are_refused(probs):
    with pytest.raises(DataError, match="soft label"):
        soft_example("text", LABELS, probs)


def test_pet_needs_unlabelled_text(llama, fast_config, tmp_path):
    config = PetConfig(patterns=PATTERNS, train=fast_config())
    with pytest.raises(ConfigError, match="no unlabelled texts"):
        pet(llama, _dataset(), [], config, tmp_path, progress=False)


# --- the command line -----------------------------------------------------------------


def _csv(path):
    rows = toy_examples(60, seed=5)
    lines = ["text,label"] + [f"{e.text} {i},{e.label}" for i, e in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_pet_command_runs_every_stage(llama_folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["pet", "--backbone", llama_folder, "--dataset", _csv(tmp_path / "toy.csv"),
            "--shots", "4", "--pattern", TEMPLATE, "--pattern", "{text} . it was",
            "--n-tokens", "2", "--steps", "2", "--eval-every", "2", "--batch-size", "4",
            "--unlabelled-limit", "6", "--test-limit", "4", "--out", out]  # fmt: skip
    assert cli.main([str(a) for a in argv]) == 0
    printed = capsys.readouterr().out
    assert "| distilled |" in printed and "generation 0 ensemble (mean)" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["unlabelled"] == 6 and len(report["config"]["patterns"]) == 2
    assert {r["examples"] for r in report["rows"]} == {4}  # --test-limit


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pattern", "{text} :"], "at least 2 patterns"),
        (["--pattern", "{text} :", "--words", "[1]"], "--words: give a JSON object"),
        (["--pattern", "a {text}", "--pattern", "b {text}"], "--shots K is required"),
        (["--pattern", "a {text}", "--pattern", "b {text}", "--shots", "0"], "data.shots"),
        (
            ["--pattern", "a {text}", "--pattern", "b {text}", "--distill-pattern", "5"],
            "pet.distill_pattern",
        ),
    ],
)
def test_bad_pet_flags_fail_in_one_line(extra, message, capsys):
    assert cli.main(["pet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_negative_generations_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["pet", "--generations", "-1"])
    assert stopped.value.code == 2 and "--generations: must be >= 0" in capsys.readouterr().err
