"""LoRA (PEFT) and full fine-tuning baselines on a private backbone copy, and the
`compare` option that puts them in a run's report."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.api import task_config_for
from softprompt.backbones.tiny_vision import tiny_dinov2, write_class_images
from softprompt.cli import main
from softprompt.config import build_run_config
from softprompt.errors import ConfigError
from softprompt.recipes.baselines import TuneConfig, TunedModel
from softprompt.train import TrainConfig, train


def _tuned(backbone, dataset, **options) -> TunedModel:
    return TunedModel(backbone, task_config_for(dataset, {"image_size": 16}), TuneConfig(**options))


def _scores(model, dataset) -> torch.Tensor:
    with torch.no_grad():
        return model(model.collate(dataset.test)).scores


def test_lora_trains_only_adapters_and_head_backbone_bit_identical(image_dataset, tmp_path):
    backbone = tiny_dinov2()
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    model = _tuned(backbone, image_dataset, kind="lora", r=2, alpha=2.0)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names - {"task.head.weight", "task.head.bias"}
    assert all("lora_" in n for n in names if not n.startswith("task."))
    assert {n.split(".")[-4] for n in names if "lora_" in n} == {"q_proj", "v_proj"}
    config = TrainConfig(steps=3, batch_size=4, eval_every=3, lr=0.05, warmup_steps=0)
    result = train(model, image_dataset, config, tmp_path / "run", progress=False)
    assert all(torch.equal(before[k], v) for k, v in backbone.model.state_dict().items())
    assert all(not p.requires_grad for p in backbone.model.parameters())
    # the file holds only what trained, and loads back exactly
    loaded = TunedModel.load(result.prompt_path, backbone)
    assert set(loaded.trained_state()) == names
    trained = TunedModel.load(result.prompt_path, backbone)
    torch.testing.assert_close(_scores(loaded, image_dataset), _scores(trained, image_dataset))
    assert any(v.abs().max() > 0 for k, v in loaded.trained_state().items() if "lora_B" in k)


def test_baselines_share_the_frozen_storage_and_leave_the_backbone_bit_identical(
    image_dataset, tmp_path
):
    """Before: each baseline deep-copied the whole backbone (LoRA: 550 MiB more RSS on
    SmolLM2-135M, 41 MiB now; full: 969 MiB, 692 now, its D and no clone of W0)."""
    backbone = tiny_dinov2()
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    frozen = {p.data_ptr() for p in backbone.model.parameters()}
    lora = _tuned(backbone, image_dataset, kind="lora", r=2)
    assert {p.data_ptr() for n, p in lora.tuned.named_parameters() if "lora_" not in n} == frozen
    full = _tuned(backbone, image_dataset, kind="full")
    bases = {m.base.data_ptr() for m in full.tuned.modules() if hasattr(m, "base")}
    assert bases and bases <= frozen  # W0 is the backbone's storage, D its own
    assert not frozen & {p.data_ptr() for p in full.trainable_parameters()}
    torch.testing.assert_close(_scores(full, image_dataset), _scores(lora, image_dataset))
    config = TrainConfig(steps=2, batch_size=4, eval_every=2, lr=0.05, warmup_steps=0)
    for model, name in ((lora, "lora"), (full, "full")):
        train(model, image_dataset, config, tmp_path / name, progress=False)
    assert all(torch.equal(before[k], v) for k, v in backbone.model.state_dict().items())


def test_full_starts_at_the_backbone_and_moves_at_the_scaled_lr(image_dataset, tmp_path):
    backbone = tiny_dinov2()
    plain = _tuned(backbone, image_dataset, kind="lora")  # B = 0: the backbone's own output
    model = _tuned(backbone, image_dataset, kind="full", backbone_lr_scale=1e-3)
    torch.testing.assert_close(_scores(model, image_dataset), _scores(plain, image_dataset))
    expected = sum(p.numel() for p in backbone.model.parameters()) + 2 * 32 + 2
    assert model.num_trainable() == expected
    start = {k: v.detach().clone() for k, v in model.tuned.state_dict().items()}
    batch = model.collate(image_dataset.train[:4])
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=0.1, eps=1e-30)
    model(batch).loss.backward()
    optimizer.step()  # Adam's first step moves each entry by lr (sign of its gradient)
    weight = model.tuned.encoder.layer[0].mlp.fc1.weight  # W0 + s * D
    base = backbone.model.encoder.layer[0].mlp.fc1.weight
    torch.testing.assert_close((weight - base).abs().max().item(), 1e-4, rtol=1e-3, atol=0)
    path = model.save(tmp_path / "full.safetensors")
    loaded = TunedModel.load(path, backbone)
    torch.testing.assert_close(_scores(loaded, image_dataset), _scores(model, image_dataset))
    assert set(start) == set(model.tuned.state_dict())


def test_a_prompt_file_is_not_a_baseline_file(image_dataset, tmp_path):
    from softprompt.api import build_model

    backbone = tiny_dinov2()
    path = build_model(backbone, image_dataset, {"name": "none"}, {}).save(tmp_path / "p.sp")
    with pytest.raises(Exception, match="not a LoRA / full fine-tuning file"):
        TunedModel.load(path, backbone)


def test_bad_compare_values_are_named():
    with pytest.raises(ConfigError, match="compare: unknown baseline"):
        build_run_config({"compare": ["lora", "prefix"]})
    with pytest.raises(ConfigError, match="baseline.kind"):
        TuneConfig(kind="adapter")


def test_compare_puts_lora_and_full_rows_in_the_report(tmp_path, capsys):
    tiny_dinov2().model.save_pretrained(tmp_path / "vit")
    write_class_images(tmp_path / "imgs", per_class=6)
    out = tmp_path / "run"
    code = main(
        ["train", "--backbone", str(tmp_path / "vit"), "--dataset", str(tmp_path / "imgs")]
        + ["--method", "vpt-shallow", "--n-tokens", "2", "--image-size", "16"]
        + ["--steps", "2", "--batch-size", "4", "--eval-every", "2", "--compare", "lora,full"]
        + ["--out", str(out)]
    )
    stdout, err = capsys.readouterr()
    assert code == 0, err
    rows = json.loads((out / "report.json").read_text())["rows"]
    names = [r["name"] for r in rows]
    assert any(n.startswith("head-only") for n in names)
    assert any(n.startswith("LoRA r=8") for n in names)
    assert any(n.startswith("full fine-tuning") for n in names)
    full = next(r for r in rows if r["name"].startswith("full"))
    lora = next(r for r in rows if r["name"].startswith("LoRA"))
    assert full["trainable_parameters"] > lora["trainable_parameters"] > 0
    assert full["file_bytes"] > lora["file_bytes"]
    for kind in ("lora", "full"):
        assert (out / kind / "prompt.safetensors").is_file()
    assert "full fine-tuning" in stdout


def test_compare_rows_on_a_text_run_come_from_compare_units(llama_folder, tmp_path, capsys):
    """`train --compare lora` on text: the LoRA row is a compare unit (OUT/lora/unit.json,
    its own prompt file) in the run's report, as for images."""
    data = tmp_path / "toy.csv"
    rows = [f"the movie was good {i},positive\nthe plot was bad {i},negative\n" for i in range(20)]
    data.write_text("text,label\n" + "".join(rows))
    out = tmp_path / "r"
    code = main(
        ["train", "--backbone", str(llama_folder), "--dataset", str(data)]
        + ["--method", "soft-prompt", "--n-tokens", "2", "--steps", "2", "--batch-size", "4"]
        + ["--eval-every", "2", "--compare", "lora", "--out", str(out), "--no-baseline"]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())["rows"]
    lora = next(r for r in report if r["name"].startswith("LoRA r=8"))
    unit = json.loads((out / "lora" / "unit.json").read_text())
    assert lora["accuracy"] == unit["accuracy"] and lora["trainable_parameters"] > 0
    assert (out / "lora" / "prompt.safetensors").is_file()


def test_compare_on_a_multitask_run_is_refused(tmp_path, capsys):
    config = tmp_path / "mt.yaml"
    config.write_text(
        "compare: [lora]\ntasks:\n  - {name: a, data: movie-sentiment}\n"
        "  - {name: b, data: election-tweets}\n"
    )
    code = main(["train", "--config", str(config), "--out", str(tmp_path / "r")])
    assert code == 2
    assert "compare: LoRA / full fine-tuning rows are for a run with one task" in (
        capsys.readouterr().err
    )
