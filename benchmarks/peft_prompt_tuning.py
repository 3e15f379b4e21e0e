"""Soft prompt tuning, softprompt vs PEFT's PromptTuningConfig, side by side.

Same frozen backbone object, same data and batch order, same prompt length and
initial prompt tensor (copied from ours into PEFT), same optimizer, learning
rate schedule and steps. Each step runs both, alternating who goes first
(A B, B A, ...), so machine-speed drift hits both equally; we print the ratio.

PEFT is used the way its docs train a causal LM: the label word appended to
the templated input, labels -100 everywhere else, `model(**batch).loss` (a
full-vocabulary loss over every position). `--peft-loss verbalizer` gives PEFT
our objective instead (cross-entropy over the label words' logits at the answer
position), so the two sides differ only in where BOS sits (PEFT puts the virtual
tokens before it, we after it): a like-for-like accuracy comparison. Accuracy is
scored identically for both: the label-word logits at the answer position of 300
held-out sentences.

Peak memory: each side runs a few steps in a fresh child process and reports
the growth of its peak RSS over the loaded-model baseline, plus the bytes the
autograd graph saves for backward in one step (exact, not noisy).

    python benchmarks/peft_prompt_tuning.py --steps 100
    python benchmarks/peft_prompt_tuning.py --steps 100 --peft-loss verbalizer \
        --out benchmarks/results/peft_prompt_tuning_verbalizer.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from peft import PromptTuningConfig, TaskType, get_peft_model  # noqa: E402

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.tasks.base import pad_right  # noqa: E402
from softprompt.train import TrainConfig  # noqa: E402
from softprompt.train.sampler import micro_batch  # noqa: E402

N_TOKENS = 20
BATCH = 8


def setup(backbone_name: str, n_tokens: int, dtype: str = "float32"):
    backbone = load_backbone(backbone_name, dtype=dtype)  # both sides share these weights
    data = load_dataset("movie-sentiment")
    ours = build_model(
        backbone, data, {"name": "soft-prompt", "n_tokens": n_tokens, "init": "vocab"}, {}
    )
    peft_model = get_peft_model(
        backbone.model,
        PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n_tokens),
    )
    with torch.no_grad():
        peft_model.prompt_encoder.default.embedding.weight.copy_(ours.method.embeddings)
    return backbone, data, ours, peft_model


def peft_batch(ours, examples):
    """Template + label word as PEFT users feed a causal LM; loss only on the label word."""
    task = ours.task
    rows, labels = [], []
    for e in examples:
        context = task.template.encode(task.tokenizer, e.text, task.config.max_text_tokens)
        word = task.word_ids[task.config.labels.index(e.label)][0]
        rows.append(context + word)
        labels.append([-100] * len(context) + word)
    ids, mask = pad_right(rows, task.pad_id)
    lab, _ = pad_right(labels, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def peft_loss(peft_model, ours, examples, kind: str = "lm"):
    """PEFT's loss: its docs' full-vocabulary LM loss on the label word, or ours."""
    if kind == "lm":
        return peft_model(**peft_batch(ours, examples)).loss
    batch = ours.task.collate(examples)
    return F.cross_entropy(peft_answer_scores(peft_model, ours, batch), batch["targets"])


def peft_answer_scores(peft_model, ours, batch, n_tokens: int = N_TOKENS) -> torch.Tensor:
    """(B, C) label-word logits at the answer position, read as our verbalizer reads them."""
    word_rows = torch.tensor([ws[0][0] for ws in ours.task.word_ids])
    logits = peft_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).logits  # (B, n + T, V)
    rows = torch.arange(len(batch["input_ids"]))
    return logits[rows, n_tokens + batch["answer_index"]][:, word_rows]  # (B, C)


def ours_loss(ours, examples):
    return ours(ours.collate(examples)).loss


@torch.no_grad()
def ours_accuracy(ours, examples, batch_size=32):
    correct = 0
    for i in range(0, len(examples), batch_size):
        out = ours(ours.collate(examples[i : i + batch_size]))
        correct += int((out.scores.argmax(-1) == out.targets).sum())
    return correct / len(examples)


@torch.no_grad()
def peft_accuracy(peft_model, ours, examples, n_tokens, batch_size=32):
    correct = 0
    for i in range(0, len(examples), batch_size):
        batch = ours.task.collate(examples[i : i + batch_size])
        answer = peft_answer_scores(peft_model, ours, batch, n_tokens)  # (B, C)
        correct += int((answer.argmax(-1) == batch["targets"]).sum())
    return correct / len(examples)


def timed_step(loss_fn, params, optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
    tick = time.perf_counter()
    loss = loss_fn()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - tick, loss.item()


def saved_bytes(loss_fn) -> int:
    """Bytes autograd keeps for backward in one step (activation memory), excluding weights."""
    total, seen = 0, set()

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if not t.requires_grad or t.grad_fn is not None:  # activations, not frozen weights
            if key not in seen and not isinstance(t, torch.nn.Parameter):
                seen.add(key)
                total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    loss.backward()
    return total


def child(side: str, backbone_name: str, steps: int, kind: str, dtype: str) -> None:
    """Fresh process: peak-RSS growth of `steps` training steps of one side."""
    backbone, data, ours, peft_model = setup(backbone_name, N_TOKENS, dtype)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    base = _status_kb("VmHWM")
    params = (
        ours.trainable_parameters()
        if side == "softprompt"
        else [p for p in peft_model.parameters() if p.requires_grad]
    )
    opt = torch.optim.AdamW(params, lr=3e-2)
    for step in range(steps):
        rows = micro_batch(data.train, BATCH, 0, step)
        fn = (
            (lambda rows=rows: ours_loss(ours, rows))
            if side == "softprompt"
            else (lambda rows=rows: peft_loss(peft_model, ours, rows, kind))
        )
        timed_step(fn, params, opt, 3e-2)
    peak = _status_kb("VmHWM")
    print(json.dumps({"side": side, "rss_growth_mb": (peak - base) / 1024}))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(backbone_name: str, steps: int, kind: str, dtype: str) -> dict[str, float]:
    out = {}
    for side in ("softprompt", "peft"):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                side,
                "--backbone",
                backbone_name,
                "--memory-steps",
                str(steps),
                "--peft-loss",
                kind,
                "--dtype",
                dtype,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        out[side] = json.loads(proc.stdout.strip().splitlines()[-1])["rss_growth_mb"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--child", choices=["softprompt", "peft"])
    parser.add_argument("--peft-loss", choices=["lm", "verbalizer"], default="lm")
    parser.add_argument("--dtype", default="float32", help="the frozen weights' dtype, both sides")
    parser.add_argument("--out", default="benchmarks/results/peft_prompt_tuning.json")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.backbone, args.memory_steps, args.peft_loss, args.dtype)

    torch.manual_seed(0)
    backbone, data, ours, peft_model = setup(args.backbone, N_TOKENS, args.dtype)
    config = TrainConfig(steps=args.steps, batch_size=BATCH, lr=3e-2, warmup_steps=10)
    ours_params = ours.trainable_parameters()
    peft_params = [p for p in peft_model.parameters() if p.requires_grad]
    assert (
        sum(p.numel() for p in ours_params)
        == sum(p.numel() for p in peft_params)
        == N_TOKENS * backbone.spec.hidden_size
    )
    opt_a = torch.optim.AdamW(ours_params, lr=config.lr, weight_decay=config.weight_decay)
    opt_b = torch.optim.AdamW(peft_params, lr=config.lr, weight_decay=config.weight_decay)

    first = micro_batch(data.train, BATCH, config.seed, 0)
    activation = {
        "softprompt": saved_bytes(lambda: ours_loss(ours, first)),
        "peft": saved_bytes(lambda: peft_loss(peft_model, ours, first, args.peft_loss)),
    }
    ours.zero_grad(set_to_none=True)
    peft_model.zero_grad(set_to_none=True)

    times = {"softprompt": [], "peft": []}
    for step in range(args.steps):
        rows = micro_batch(data.train, BATCH, config.seed, step)
        lr = config.lr_at(step)
        sides = [
            ("softprompt", lambda rows=rows: ours_loss(ours, rows), ours_params, opt_a),
            (
                "peft",
                lambda rows=rows: peft_loss(peft_model, ours, rows, args.peft_loss),
                peft_params,
                opt_b,
            ),
        ]
        for name, fn, params, opt in sides if step % 2 == 0 else sides[::-1]:
            seconds, loss = timed_step(fn, params, opt, lr)
            times[name].append(seconds)
        if (step + 1) % 10 == 0:
            print(
                f"step {step + 1}: softprompt {statistics.median(times['softprompt']):.2f} s/step, peft {statistics.median(times['peft']):.2f} s/step",
                flush=True,
            )

    held_out = data.test[: args.eval_examples]
    acc = {
        "softprompt": ours_accuracy(ours, held_out),
        "peft": peft_accuracy(peft_model, ours, held_out, N_TOKENS),
    }
    memory = measure_memory(args.backbone, args.memory_steps, args.peft_loss, args.dtype)
    result = {
        "backbone": args.backbone,
        "dtype": args.dtype,
        "steps": args.steps,
        "batch_size": BATCH,
        "n_tokens": N_TOKENS,
        "peft_loss": args.peft_loss,
        "total_seconds": {k: sum(v) for k, v in times.items()},
        **side_by_side(times, acc, activation, memory),
    }
    med = result["median_step_seconds"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print()
    print("| | softprompt | PEFT | PEFT / softprompt |\n|---|---|---|---|")
    print(
        f"| median step time | {med['softprompt']:.3f} s | {med['peft']:.3f} s | {result['step_time_ratio_peft_over_softprompt']:.2f}x |"
    )
    print(
        f"| saved activations / step | {result['saved_activation_mb']['softprompt']:.0f} MB | {result['saved_activation_mb']['peft']:.0f} MB | {result['activation_ratio_peft_over_softprompt']:.2f}x |"
    )
    print(
        f"| peak RSS growth ({args.memory_steps} steps) | {memory['softprompt']:.0f} MB | {memory['peft']:.0f} MB | {result['peak_rss_ratio_peft_over_softprompt']:.2f}x |"
    )
    print(f"| accuracy ({len(held_out)} test) | {acc['softprompt']:.3f} | {acc['peft']:.3f} | |")


def side_by_side(
    times: dict[str, list[float]],
    accuracy: dict[str, float],
    activation: dict[str, float],
    memory: dict[str, float],
) -> dict:
    """The fields every softprompt-vs-PEFT record shares: medians, ratios, memory."""
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "median_step_seconds": med,
        "step_time_ratio_peft_over_softprompt": med["peft"] / med["softprompt"],
        "step_ratio_per_pair": statistics.median(
            b / a for a, b in zip(times["softprompt"], times["peft"], strict=True)
        ),
        "accuracy": accuracy,
        "saved_activation_mb": {k: v / 2**20 for k, v in activation.items()},
        "activation_ratio_peft_over_softprompt": activation["peft"] / activation["softprompt"],
        "peak_rss_growth_mb": memory,
        "peak_rss_ratio_peft_over_softprompt": memory["peft"] / max(memory["softprompt"], 1e-9),
        "torch_threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    main()
