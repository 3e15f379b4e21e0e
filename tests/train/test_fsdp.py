"""FSDP of the frozen backbone (`train.fsdp`): 2 CPU processes (gloo) under torchrun train
the same prompt as one process with the same global batch, while each process holds only
its shard of every layer between steps.

PyTorch 2.13's FSDP2 (`fully_shard`) runs on CPU with gloo, so this runs here; where
torch.distributed or gloo is missing the test skips saying so (and fails under CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict

import pytest
import torch
import torch.distributed as dist

from softprompt.promptfile import read_prompt_file

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import torch

    torch.set_num_threads(1)
    from softprompt.backbones.tiny import tiny_llama
    from softprompt.data import Dataset, Example
    from softprompt.inject.checkpointing import checkpointable_layers
    from softprompt.model import PromptModel
    from softprompt.promptfile import save_prompt_file
    from softprompt.tasks import TaskConfig
    from softprompt.train import TrainConfig, train

    data_path, out_dir, method = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    options = {"soft-prompt": {"n_tokens": 4}, "prefix-tuning": {"n_tokens": 2, "hidden": 8}}
    rows = json.loads(Path(data_path).read_text())
    splits = [[Example(**r) for r in rows[k]] for k in ("train", "validation", "test")]
    dataset = Dataset("toy", "classification", ["negative", "positive"], *splits)
    task = TaskConfig(labels=["negative", "positive"], template="review : {text} sentiment :")
    backbone = tiny_llama()
    model = PromptModel(backbone, task, method, options[method])
    config = TrainConfig(steps=4, batch_size=4, eval_every=2, eval_examples=8, warmup_steps=1,
                         lr=0.1, fsdp=True)
    result = train(model, dataset, config, out_dir, progress=False)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    weight = checkpointable_layers(backbone)[0].mlp.up_proj.weight
    local = weight.to_local() if hasattr(weight, "to_local") else weight
    evals = [h for h in result.history if h["kind"] == "eval"]
    save_prompt_file(out_dir / f"final-rank{rank}.safetensors", model.state_dict(),
                     {"world": world, "evals": evals, "best_step": result.best_step,
                      "held_rows": local.shape[0], "rows": weight.shape[0]})
    """
)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]


def _run(args: list[str], cwd) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )


def _fsdp_missing() -> str | None:
    if not dist.is_available():
        return "torch.distributed is not installed in this PyTorch build"
    if not dist.is_gloo_available():
        return "the gloo backend (FSDP on CPU) is not installed in this PyTorch build"
    return None


@pytest.mark.skipif(_fsdp_missing() is not None, reason=str(_fsdp_missing()))
def test_fsdp_two_processes_equal_single_process(tmp_path, toy_dataset, method="soft-prompt"):
    script = tmp_path / "train_prompt.py"
    script.write_text(SCRIPT)
    data = tmp_path / "data.json"
    splits = ("train", "validation", "test")
    data.write_text(json.dumps({k: [asdict(e) for e in getattr(toy_dataset, k)] for k in splits}))

    _run([sys.executable, str(script), str(data), str(tmp_path / "single"), method], tmp_path)
    _run([*TORCHRUN, str(script), str(data), str(tmp_path / "fsdp"), method], tmp_path)

    single, single_meta = read_prompt_file(
        tmp_path / "single" / "final-rank0.safetensors", check_metadata=False
    )
    assert single_meta["held_rows"] == single_meta["rows"]  # one process: nothing sharded
    for rank in (0, 1):
        tensors, meta = read_prompt_file(
            tmp_path / "fsdp" / f"final-rank{rank}.safetensors", check_metadata=False
        )
        assert meta["world"] == 2
        # between steps each process holds half of every layer's weights
        assert meta["held_rows"] * 2 == meta["rows"] == single_meta["rows"]
        assert tensors.keys() == single.keys()
        for key in single:
            torch.testing.assert_close(tensors[key], single[key], atol=1e-6, rtol=1e-5)
        assert meta["best_step"] == single_meta["best_step"]
        for got, want in zip(meta["evals"], single_meta["evals"], strict=True):
            assert got["accuracy"] == want["accuracy"]
            assert got["loss"] == pytest.approx(want["loss"], abs=1e-5)
    assert (tmp_path / "fsdp" / "prompt.safetensors").is_file()
