"""DDP on CPU (gloo, 2 processes under torchrun) trains the same prompt as one process
with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict

import pytest
import torch

from softprompt.promptfile import read_prompt_file

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import torch

    torch.set_num_threads(1)
    from softprompt.backbones.tiny import tiny_llama
    from softprompt.data import Dataset, Example
    from softprompt.model import PromptModel
    from softprompt.promptfile import save_prompt_file
    from softprompt.tasks import TaskConfig
    from softprompt.train import TrainConfig, train

    data_path, out_dir = sys.argv[1], Path(sys.argv[2])
    rows = json.loads(Path(data_path).read_text())
    if len(sys.argv) > 3:  # keep only this many validation rows
        rows["validation"] = rows["validation"][: int(sys.argv[3])]
    splits = [[Example(**r) for r in rows[k]] for k in ("train", "validation", "test")]
    dataset = Dataset("toy", "classification", ["negative", "positive"], *splits)
    task = TaskConfig(labels=["negative", "positive"], template="review : {text} sentiment :")
    model = PromptModel(tiny_llama(), task, "soft-prompt", {"n_tokens": 4})
    config = TrainConfig(steps=4, batch_size=4, eval_every=2, eval_examples=8, warmup_steps=1, lr=0.1)
    result = train(model, dataset, config, out_dir, progress=False)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    evals = [h for h in result.history if h["kind"] == "eval"]
    save_prompt_file(out_dir / f"final-rank{rank}.safetensors", model.state_dict(),
                     {"world": world, "evals": evals, "best_step": result.best_step})
    """
)


def _run(args: list[str], tmp_path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
# `accelerate launch --cpu` hands several CPU processes to mpirun; `--multi_gpu` is its
# torchrun path, which works on any device: the loop itself picks gloo on CPU.
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
ACCELERATE += ["--num_processes", "2", "--num_machines", "1", "--main_process_port", "0"]
ACCELERATE += ["--mixed_precision", "no", "--dynamo_backend", "no"]
LAUNCHERS = {"torchrun": TORCHRUN, "accelerate": ACCELERATE}


def _write_inputs(tmp_path, toy_dataset):
    script = tmp_path / "train_prompt.py"
    script.write_text(SCRIPT)
    data = tmp_path / "data.json"
    splits = ("train", "validation", "test")
    data.write_text(json.dumps({k: [asdict(e) for e in getattr(toy_dataset, k)] for k in splits}))
    return script, data


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_ddp_two_processes_equal_single_process(tmp_path, toy_dataset, make_model, llama, launcher):
    script, data = _write_inputs(tmp_path, toy_dataset)

    _run([sys.executable, str(script), str(data), str(tmp_path / "single")], tmp_path)
    _run([*LAUNCHERS[launcher], str(script), str(data), str(tmp_path / "ddp")], tmp_path)

    single, single_meta = read_prompt_file(
        tmp_path / "single" / "final-rank0.safetensors", check_metadata=False
    )
    assert single_meta["world"] == 1
    ranks = [
        read_prompt_file(tmp_path / "ddp" / f"final-rank{r}.safetensors", check_metadata=False)
        for r in (0, 1)
    ]
    for tensors, meta in ranks:
        assert meta["world"] == 2
        assert tensors.keys() == single.keys()
        for key in single:
            torch.testing.assert_close(tensors[key], single[key], atol=1e-6, rtol=1e-5)
        # validation is sharded over the processes and summed: same numbers, same best step
        assert meta["best_step"] == single_meta["best_step"]
        for got, want in zip(meta["evals"], single_meta["evals"], strict=True):
            assert got["examples"] == want["examples"] == 8
            assert got["accuracy"] == want["accuracy"]
            assert got["loss"] == pytest.approx(want["loss"], abs=1e-5)
    # the prompt really moved during training (the comparison is not of two untouched inits)
    fresh = make_model(llama, task={"template": "{text}"}, n_tokens=4)
    assert not torch.allclose(fresh.method.embeddings, single["method.embeddings"], atol=1e-3)
    # only rank 0 writes the run's files
    assert (tmp_path / "ddp" / "prompt.safetensors").is_file()
    assert (tmp_path / "ddp" / "checkpoint.safetensors").is_file()
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "single" / "metrics.jsonl").read_text().splitlines())


def test_ddp_with_fewer_validation_rows_than_processes(tmp_path, toy_dataset):
    script, data = _write_inputs(tmp_path, toy_dataset)
    _run([*TORCHRUN, str(script), str(data), str(tmp_path / "ddp"), "1"], tmp_path)
    tensors, meta = read_prompt_file(
        tmp_path / "ddp" / "final-rank1.safetensors", check_metadata=False
    )
    assert all(e["examples"] == 1 for e in meta["evals"])


MULTI_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import torch

    torch.set_num_threads(1)
    from softprompt.backbones.tiny import tiny_llama
    from softprompt.data import Dataset, Example
    from softprompt.model import MultiTaskModel, PromptModel
    from softprompt.promptfile import save_prompt_file
    from softprompt.tasks import TaskConfig
    from softprompt.train import TrainConfig, train

    data_path, out_dir = sys.argv[1], Path(sys.argv[2])
    rows = json.loads(Path(data_path).read_text())
    splits = [[Example(**r) for r in rows[k]] for k in ("train", "validation", "test")]
    sentiment = Dataset("toy", "classification", ["negative", "positive"], *splits)
    flipped = [[Example(e.text, "yes" if e.label == "positive" else "no") for e in s] for s in splits]
    yesno = Dataset("yesno", "classification", ["no", "yes"], *flipped)
    backbone = tiny_llama()
    model = MultiTaskModel({
        "sentiment": PromptModel(backbone, TaskConfig(labels=["negative", "positive"],
                                 template="review : {text} sentiment :"), "soft-prompt", {"n_tokens": 4}),
        "yesno": PromptModel(backbone, TaskConfig(labels=["no", "yes"], template="{text} good ?"),
                             "prefix-tuning", {"n_tokens": 2, "hidden": 8}),
    })
    config = TrainConfig(steps=4, batch_size=4, eval_every=2, eval_examples=8, warmup_steps=1, lr=0.1)
    result = train(model, {"sentiment": sentiment, "yesno": yesno}, config, out_dir, progress=False)
    rank = int(os.environ.get("RANK", "0"))
    save_prompt_file(out_dir / f"final-rank{rank}.safetensors", model.state_dict(),
                     {"best": {k: v["step"] for k, v in result.best.items()}})
    """
)


def test_ddp_multitask_run_keeps_ranks_in_step(tmp_path, toy_dataset):
    """Two tasks, two methods, two processes: every rank ends with the same prompts (some
    micro-batches give a rank no row of a task), and each task has its own prompt file."""
    _, data = _write_inputs(tmp_path, toy_dataset)
    script = tmp_path / "multi.py"
    script.write_text(MULTI_SCRIPT)
    _run([*TORCHRUN, str(script), str(data), str(tmp_path / "ddp")], tmp_path)
    (a, meta_a), (b, meta_b) = (
        read_prompt_file(tmp_path / "ddp" / f"final-rank{r}.safetensors", check_metadata=False)
        for r in (0, 1)
    )
    assert a.keys() == b.keys() and meta_a["best"] == meta_b["best"]
    for key in a:
        assert torch.isfinite(a[key]).all()
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    for task in ("sentiment", "yesno"):
        assert (tmp_path / "ddp" / task / "prompt.safetensors").is_file()
