"""WNUT-16 named entities on MiniLM: prompts on the frozen model against head-only, LoRA
and full fine-tuning.

Same backbone, data, steps, batch, schedule shape and seed for each row; each keeps
its best state on the 239 validation tweets (checked every `--eval-every` steps) and
is scored on the 239 test tweets with entity-level F1 (exact type and span, seqeval's
default mode). The prompt rows train through softprompt's own loop; LoRA (PEFT, on the
query/value projections) and full fine-tuning change the backbone, which that loop
never does, so they run in the plain loop below over the same collated batches, loss
and scorer. Prints a Markdown table and writes benchmarks/results/ner_wnut16.json.

    OMP_NUM_THREADS=1 python benchmarks/ner_wnut16.py --steps 400
    OMP_NUM_THREADS=1 python benchmarks/ner_wnut16.py --only lora,full   # some rows
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from softprompt.api import build_model
from softprompt.backbones import load_backbone
from softprompt.data import Dataset, load_dataset
from softprompt.evaluate import evaluate
from softprompt.model import PromptModel
from softprompt.train import TrainConfig, train

PROMPT_ROWS = {  # key -> (label, method options, lr)
    "head": ("head only (frozen MiniLM)", {"name": "none"}, 0.01),
    "soft": ("soft prompt, 16 tokens", {"name": "soft-prompt", "n_tokens": 16}, 0.01),
    "deep": (
        "P-tuning v2: deep prompts, 16 tokens, direct",
        {"name": "prefix-tuning", "n_tokens": 16, "reparameterize": False},
        0.01,
    ),
    "deep-mlp": (
        "P-tuning v2: deep prompts, 16 tokens, MLP",
        {"name": "prefix-tuning", "n_tokens": 16, "reparameterize": True},
        0.001,
    ),
    "deep-mlp-scaled": (
        "P-tuning v2: deep prompts, 16 tokens, MLP, prefix lr x 0.01",
        {"name": "prefix-tuning", "n_tokens": 16, "reparameterize": True, "lr_scale": 0.01},
        0.01,
    ),
}
TUNED_ROWS = {  # key -> (label, backbone lr); the head keeps --lr
    "lora": ("LoRA r=8 on query/value (PEFT)", 5e-4),
    "full": ("full fine-tuning", 5e-5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.01, help="head lr of the tuned rows")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--only", default="", help="comma-separated row keys (default: all)")
    parser.add_argument("--out", default="benchmarks/results/ner_wnut16.json")
    args = parser.parse_args()
    data = load_dataset("wnut16-ner")
    keys = args.only.split(",") if args.only else [*PROMPT_ROWS, *TUNED_ROWS]
    out = Path(args.out)
    done = json.loads(out.read_text())["rows"] if out.exists() else []
    rows = {row["key"]: row for row in done if "key" in row}
    for key in keys:
        row = _prompt_row(key, data, args) if key in PROMPT_ROWS else _tuned_row(key, data, args)
        rows[key] = row
        print(row, flush=True)
        _write(out, args, list(rows.values()))  # after every row: a cut run keeps what it did
    _print_table(list(rows.values()))


def _config(args: argparse.Namespace, lr: float) -> TrainConfig:
    return TrainConfig(
        steps=args.steps, batch_size=16, lr=lr, warmup_steps=20, eval_every=args.eval_every,
        eval_examples=0, seed=0,
    )  # fmt: skip


def _prompt_row(key: str, data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    label, method, lr = PROMPT_ROWS[key]
    backbone = load_backbone("minilm-l6")
    model = build_model(backbone, data, method, {})
    with tempfile.TemporaryDirectory() as out:
        tick = time.perf_counter()
        result = train(model, data, _config(args, lr), out, progress=True)
        seconds = time.perf_counter() - tick
        best = PromptModel.load(result.prompt_path, backbone)
        scores = evaluate(best, data.test)
        size = result.prompt_path.stat().st_size
    return {"key": key, "method": label, "lr": lr, **scores, "trainable": best.num_trainable(),
            "file_bytes": size, "train_seconds": seconds, "best_step": result.best_step}  # fmt: skip


def _tuned_row(key: str, data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Head-only model whose backbone is trained too (LoRA adapters or every weight)."""
    label, backbone_lr = TUNED_ROWS[key]
    backbone = load_backbone("minilm-l6")  # a fresh copy: this row changes its weights
    model = build_model(backbone, data, {"name": "none"}, {})
    if key == "lora":
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"])
        get_peft_model(backbone.model, lora)  # wraps the Linear layers in place
        body = [p for n, p in backbone.model.named_parameters() if "lora_" in n]
    else:
        body = list(backbone.model.parameters())
    for p in body:
        p.requires_grad_(True)
    head = model.trainable_parameters()
    groups = [{"params": body, "lr": backbone_lr}, {"params": head, "lr": args.lr}]
    tick = time.perf_counter()
    best_step, scores = _plain_loop(model, body + head, groups, data, args)
    seconds = time.perf_counter() - tick
    trainable = sum(p.numel() for p in body + head)
    return {"key": key, "method": label, "lr": backbone_lr, **scores, "trainable": trainable,
            "file_bytes": 4 * trainable, "train_seconds": seconds, "best_step": best_step}  # fmt: skip


def _plain_loop(
    model: PromptModel,
    params: list[torch.nn.Parameter],
    groups: list[dict[str, Any]],
    data: Dataset,
    args: argparse.Namespace,
) -> tuple[int, dict[str, Any]]:
    """AdamW, linear warmup then linear decay, clip 1.0: the shape softprompt's loop uses.
    The test score is taken at the best validation entity F1."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-5)
    warmup = 20
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup if s < warmup else max(0.0, (args.steps - s) / (args.steps - warmup))
        ),
    )
    order = random.Random(0)
    pool: list[int] = []
    best, best_step, best_state = -1.0, 0, None
    for step in range(1, args.steps + 1):
        if len(pool) < 16:
            pool += order.sample(range(len(data.train)), len(data.train))
        batch, pool = [data.train[i] for i in pool[:16]], pool[16:]
        model.train()
        loss = model(model.collate(batch)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            f1 = evaluate(model, data.validation)["entity_f1"]
            print(f"step {step}: loss {loss.item():.4f} validation entity F1 {f1:.4f}", flush=True)
            if f1 > best or math.isnan(best):
                best, best_step = f1, step
                best_state = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, kept in zip(params, best_state or [], strict=False):
            p.copy_(kept)
    model.eval()
    return best_step, evaluate(model, data.test)


def _write(out: Path, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"steps": args.steps, "rows": copy.deepcopy(rows)}, indent=2) + "\n")
    tmp.replace(out)


def _print_table(rows: list[dict[str, Any]]) -> None:
    print("\n| method | lr | test entity F1 | precision | recall | token accuracy | trainable "
          "| file |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        print(f"| {r['method']} | {r['lr']:g} | {r['entity_f1']:.3f} | {r['entity_precision']:.3f} "
              f"| {r['entity_recall']:.3f} | {r['accuracy']:.3f} | {r['trainable']:,} "
              f"| {r['file_bytes'] / 1024:,.0f} KiB |")  # fmt: skip


if __name__ == "__main__":
    main()
