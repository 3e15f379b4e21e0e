"""`softprompt estimate`: the memory a run needs and its step time, before it runs.

The check that matters: on a llama built in code (big enough that a step's activations,
~100 MB, stand well above allocator noise), the training and serving memory the estimate
extrapolates from its calibration at batches 4 and 8 is compared with the memory a fresh
process really uses at batch 16. "Really uses" is the RSS delta: the kernel's peak
resident set (VmHWM, reset through /proc/self/clear_refs) minus VmRSS just before the
steps, so the measure sees every byte torch, the allocator and Python touched.

Both processes run with glibc's mmap threshold fixed at its 128 KiB default
(MALLOC_MMAP_THRESHOLD_): left dynamic, it makes the RSS of mid-size tensors (128 KiB to
32 MiB, all of this model's) depend on allocation history. Measured here: a first forward
at batch 16 peaks at 27 MiB, the same forward after one at batch 4 at 20 MiB. The
estimate counts what the step's tensors occupy, not that allocator slack (see
softprompt/estimate.py)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from softprompt.cli import main
from softprompt.data import Example
from softprompt.errors import ConfigError
from softprompt.estimate import (
    Point,
    calibration_sizes,
    estimate,
    eval_batch_size,
    extrapolate,
    module_bytes,
    prompt_kv_bytes,
)

# the estimate must come within this fraction of the measured memory
TOLERANCE = 0.15
BATCH, SEQ = 16, 96

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, LlamaConfig
    from softprompt.backbones import from_pretrained_model
    from softprompt.backbones.tiny import tiny_tokenizer
    from softprompt.estimate import CLEAR_REFS, _release_freed, _status_bytes, estimate
    from softprompt.estimate import synthetic_rows
    from softprompt.model import PromptModel
    from softprompt.tasks import TaskConfig

    what, batch, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    runtime = _status_bytes("VmRSS")  # before the model, as `softprompt estimate` reads it
    tok = tiny_tokenizer("llama")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=512,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    backbone = from_pretrained_model(model, tok, name="wide-llama", kind="causal-lm")
    if what == "estimate":
        result = estimate(backbone, batch_size=batch, seq_len=seq, runtime_bytes=runtime)
        print(json.dumps(result.to_dict()))
        sys.exit()
    task = TaskConfig(labels=["negative", "positive"], template="{text}", max_text_tokens=seq)
    prompt = PromptModel(backbone, task, "soft-prompt")
    optimizer = torch.optim.AdamW(prompt.trainable_parameters(), lr=1e-6)
    batch = prompt.collate(synthetic_rows(seq, batch))
    _release_freed()
    CLEAR_REFS.write_text("5")
    before = _status_bytes("VmRSS")
    for _ in range(2):
        if what == "train":
            out = prompt(batch)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                prompt(batch)
    print(json.dumps({"peak": _status_bytes("VmHWM") - before, "process": _status_bytes("VmHWM")}))
    """
)


def _run(tmp_path: Path, *args: str) -> dict:
    script = tmp_path / "measure.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    proc = subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="RSS peaks are read from Linux's /proc"
)
def test_estimate_within_tolerance_of_measured_peak(tmp_path):
    est = _run(tmp_path, "estimate", str(BATCH), str(SEQ))
    trained = _run(tmp_path, "train", str(BATCH), str(SEQ))
    served = _run(tmp_path, "serve", str(BATCH), str(SEQ))
    train, serve = trained["peak"], served["peak"]
    # the fresh process also allocates AdamW's state in its first step
    predicted_train = est["train_step_bytes"] + 8 * est["prompt_parameters"]
    print(f"train: estimated {predicted_train / 2**20:.1f} MiB, measured {train / 2**20:.1f} MiB")
    print(
        f"serve: estimated {est['serve_step_bytes'] / 2**20:.1f} MiB, measured {serve / 2**20:.1f} MiB"
    )
    assert train > 50 * 2**20  # the activations dominate, not noise
    assert predicted_train == pytest.approx(train, rel=TOLERANCE)
    assert est["serve_step_bytes"] == pytest.approx(serve, rel=TOLERANCE)
    # the whole process: runtime, model code, weights and the step together
    assert est["train_peak_bytes"] == pytest.approx(trained["process"], rel=TOLERANCE)
    assert est["serve_peak_bytes"] == pytest.approx(served["process"], rel=TOLERANCE)


def test_prompt_kv_bytes_counts_every_layer_slot(make_model, llama, bert):
    # tiny llama: 2 layers x (K, V) x 2 kv heads x (BOS + 4 virtual tokens) x head dim 8 x 4 B
    model = make_model(llama, n_tokens=4)
    assert prompt_kv_bytes(model) == 2 * 2 * 2 * 5 * 8 * 4
    prefix = make_model(llama, method="prefix-tuning", n_tokens=3, hidden=8)
    assert prompt_kv_bytes(prefix) == 2 * 2 * 2 * (3 + 1) * 8 * 4
    assert prompt_kv_bytes(make_model(bert, n_tokens=4)) == 0  # encoders cache nothing


def test_module_bytes_counts_tied_weights_once(llama):
    params = {id(p): p for p in llama.model.parameters()}
    buffers = list(llama.model.buffers())
    want = sum(p.numel() * 4 for p in params.values()) + sum(
        b.numel() * b.element_size() for b in buffers
    )
    assert module_bytes(llama.model) == want


def test_extrapolate_is_the_line_through_the_points():
    points = [Point(2, 100, 1.0), Point(4, 180, 1.5)]
    assert extrapolate(points, lambda p: float(p.peak_bytes), 8) == 340
    assert extrapolate(points, lambda p: p.seconds, 8) == 2.5
    shrinking = [Point(2, 100, 1.0), Point(4, 90, 1.0)]  # noise: never a negative slope
    assert extrapolate(shrinking, lambda p: float(p.peak_bytes), 16) == 90
    assert calibration_sizes(1) == (1, 2)
    assert calibration_sizes(16) == (4, 8)


def test_estimate_on_tiny_model_reports_every_part(llama):
    result = estimate(llama, batch_size=2, seq_len=8, tasks=3)
    assert result.weight_bytes == module_bytes(llama.model)
    assert result.prompt_parameters == 20 * 32  # 20 virtual tokens x hidden 32
    assert result.step_seconds > 0
    assert result.serve_peak_bytes >= result.weight_bytes + 3 * result.kv_bytes_per_task
    text = "\n".join(result.lines())
    assert "training peak" in text and "serving 3 task(s)" in text
    with pytest.raises(ConfigError, match="--tasks: must be >= 1"):
        estimate(llama, tasks=0)


def test_eval_batch_size_fits_the_budget(make_model, llama):
    model = make_model(llama, n_tokens=4)
    rows = [Example(" ".join(["good"] * 30), "positive") for _ in range(64)]
    assert eval_batch_size(model, rows, budget_bytes=1) == 1
    assert eval_batch_size(model, rows, budget_bytes=2**40) == 64  # capped by the rows
    assert eval_batch_size(model, rows, budget_bytes=2**40, largest=16) == 16


def test_cli_estimate_prints_the_report(llama_folder, capsys):
    args = ["estimate", "--backbone", str(llama_folder), "--batch-size", "2", "--seq-len", "8"]
    assert main([*args, "--dtype", "float32", "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["batch_size"] == 2 and report["train_peak_bytes"] > report["weight_bytes"]
    assert main([*args, "--dtype", "float64"]) == 2
    assert "backbone.dtype" in capsys.readouterr().err


def test_calibration_leaves_the_prompt_as_it_was(make_model, llama):
    from softprompt.estimate import calibrate, synthetic_rows

    model = make_model(llama, n_tokens=4)
    before = model.method.embeddings.detach().clone()
    result = calibrate(model, lambda n: synthetic_rows(6, n), (1, 2), train=True)
    assert [p.batch_size for p in result.points] == [1, 2]
    assert torch.equal(model.method.embeddings, before)
    assert all(p.grad is None for p in model.trainable_parameters())
