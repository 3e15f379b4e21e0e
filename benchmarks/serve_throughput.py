"""Serving 8 tasks on one SmolLM2: our mixed batches vs PEFT's one batch per adapter.

A stream of classification requests spread over 8 tasks (soft prompts of `--n-tokens`,
20 by default, seeded vocab inits; movie-sentiment test sentences) arrives in windows
of `--window` requests, as a dynamic batcher would gather them. Per window, interleaved (the order rotates):

  ours     one engine call: every row in one forward pass, packed end to end without
           padding (inject/packing.py), each task's prompt K/V (with its template head)
           from the cache (computed once per task, before timing), label words scored at
           the answer position only
  padded   the same with packing off: rows padded, in least-cost passes of similar length
  nocache  ours with the cache bound set to 0: each distinct prompt re-run every window
  peft     PEFT PromptTuningConfig with 8 adapters holding the same prompt tensors: per
           window, one forward per adapter over its rows (`set_adapter`), the virtual
           tokens recomputed each call and full-vocabulary logits, as PEFT serves them

Prints median seconds per window (wall clock, and this process's CPU seconds, which a
crowded machine disturbs less), requests/s, the ratios, and checks: every mixed-batch
answer equals that request run alone through our engine, and how often PEFT picks the
same label (its input order differs: PEFT puts BOS after the virtual tokens).

    OMP_NUM_THREADS=1 python benchmarks/serve_throughput.py --windows 6 --window 16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from peft import PromptTuningConfig, TaskType, get_peft_model  # noqa: E402

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import Example, load_dataset  # noqa: E402
from softprompt.serve.engine import Engine  # noqa: E402
from softprompt.serve.store import PromptStore  # noqa: E402

TASKS = 8


def build(backbone, data, folder: Path, n_tokens: int):
    store = PromptStore(folder / "store")
    models = {}
    for i in range(TASKS):
        method = {"name": "soft-prompt", "n_tokens": n_tokens, "init": "vocab", "seed": i}
        models[f"task{i}"] = build_model(backbone, data, method, {})
        store.add(f"task{i}", models[f"task{i}"].save(folder / f"task{i}.safetensors"))
    return store, models


def make_peft(backbone, models, n_tokens: int):
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n_tokens)
    peft_model = get_peft_model(backbone.model, config, adapter_name="task0")
    for name in list(models)[1:]:
        peft_model.add_adapter(name, config)
    with torch.no_grad():
        for name, model in models.items():
            peft_model.prompt_encoder[name].embedding.weight.copy_(model.method.embeddings)
    peft_model.eval()
    return peft_model


@torch.no_grad()
def peft_window(peft_model, models, window, n_tokens: int):
    """One forward per adapter present in the window; the label with the higher logit."""
    labels = [None] * len(window)
    by_task: dict[str, list[int]] = {}
    for i, (task, _) in enumerate(window):
        by_task.setdefault(task, []).append(i)
    for task, rows in by_task.items():
        task_obj = models[task].task
        peft_model.set_adapter(task)
        batch = task_obj.collate([Example(window[i][1], "") for i in rows])
        logits = peft_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits  # (b, n + T, V)
        words = torch.tensor([ws[0][0] for ws in task_obj.word_ids])
        answer = logits[torch.arange(len(rows)), n_tokens + batch["answer_index"]][:, words]
        for i, best in zip(rows, answer.argmax(-1).tolist(), strict=True):
            labels[i] = task_obj.config.labels[best]
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-tokens", type=int, default=20, help="soft prompt length per task")
    parser.add_argument("--out", default="benchmarks/results/serve_throughput.json")
    args = parser.parse_args()
    if args.windows < 1 or args.window < 1:
        parser.error("--windows and --window: expected positive integers")
    if not 1 <= args.n_tokens <= 512:
        parser.error(f"--n-tokens: expected 1 to 512 virtual tokens, got {args.n_tokens}")
    torch.set_num_threads(args.threads)

    backbone = load_backbone(args.backbone)
    data = load_dataset("movie-sentiment")
    folder = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    store, models = build(backbone, data, folder, args.n_tokens)
    rng = random.Random(0)
    texts = [e.text for e in data.test]
    stream = [
        [(f"task{rng.randrange(TASKS)}", rng.choice(texts)) for _ in range(args.window)]
        for _ in range(args.windows)
    ]
    engines = {
        "ours": Engine(backbone, store, cache_bytes=256 << 20),
        "padded": Engine(backbone, store, cache_bytes=256 << 20, pack_tokens=None),
        "nocache": Engine(backbone, store, cache_bytes=0),
    }
    for engine in engines.values():
        engine.load_all()
    for name in ("ours", "padded"):
        engines[name].run([engines[name].request(t, "warm up", generate=False) for t in models])
    peft_model = make_peft(backbone, models, args.n_tokens)

    def run_ours(name, window):
        engine = engines[name]
        return engine.run([engine.request(t, x, generate=False) for t, x in window])

    arms = {
        "ours": lambda w: [r["label"] for r in run_ours("ours", w)],
        "padded": lambda w: [r["label"] for r in run_ours("padded", w)],
        "nocache": lambda w: [r["label"] for r in run_ours("nocache", w)],
        "peft": lambda w: peft_window(peft_model, models, w, args.n_tokens),
    }
    times: dict[str, list[float]] = {a: [] for a in arms}
    cpu_times: dict[str, list[float]] = {a: [] for a in arms}  # this process's CPU seconds
    answers: dict[str, list[str]] = {a: [] for a in arms}
    order = list(arms)
    for k, window in enumerate(stream):
        rotated = order[k % len(order) :] + order[: k % len(order)]
        for arm in rotated:
            tick, cpu = time.perf_counter(), time.process_time()
            labels = arms[arm](window)
            times[arm].append(time.perf_counter() - tick)
            cpu_times[arm].append(time.process_time() - cpu)
            answers[arm].extend(labels)
        print(f"window {k}: " + "  ".join(f"{a} {times[a][-1]:.2f}s" for a in order), flush=True)

    # correctness: the first window's mixed-batch answers equal each request run alone
    flat = [item for window in stream for item in window]
    engine = engines["ours"]
    first = stream[0]
    alone = [engine.run([engine.request(t, x, generate=False)])[0]["label"] for t, x in first]
    mismatches = sum(a != b for a, b in zip(alone, answers["ours"][: len(first)], strict=True))
    agree = sum(a == b for a, b in zip(answers["ours"], answers["peft"], strict=True)) / len(flat)
    med = {a: statistics.median(t) for a, t in times.items()}
    cpu = {a: statistics.median(t) for a, t in cpu_times.items()}
    result = {
        "backbone": args.backbone,
        "tasks": TASKS,
        "n_tokens": args.n_tokens,
        "window_requests": args.window,
        "windows": args.windows,
        "threads": args.threads,
        "median_window_seconds": med,
        "requests_per_second": {a: args.window / s for a, s in med.items()},
        "median_window_cpu_seconds": cpu,
        "peft_over_ours": med["peft"] / med["ours"],
        "nocache_over_ours": med["nocache"] / med["ours"],
        "padded_over_ours": med["padded"] / med["ours"],
        "peft_over_ours_cpu": cpu["peft"] / cpu["ours"],
        "nocache_over_ours_cpu": cpu["nocache"] / cpu["ours"],
        "padded_over_ours_cpu": cpu["padded"] / cpu["ours"],
        "per_window_peft_over_ours_cpu": [
            p / o for p, o in zip(cpu_times["peft"], cpu_times["ours"], strict=True)
        ],
        "per_window_peft_over_ours": [
            p / o for p, o in zip(times["peft"], times["ours"], strict=True)
        ],
        "ours_mixed_vs_alone_mismatches": f"{mismatches} of {len(first)} (first window)",
        "label_agreement_with_peft": agree,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
