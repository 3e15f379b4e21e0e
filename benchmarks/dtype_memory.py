"""Peak memory and step time of prompt training with the frozen backbone (SmolLM2-135M,
or `--backbone`) held in float32, bf16, int8 or NF4 (issue 19: `--dtype`, `--quantize`).

Each run is its own process (a process's peak RSS only grows), started in rounds that
interleave the variants (A B C A B C ...), because timings on this shared 2-core machine
drift from minute to minute: ratios against float32 are quoted from runs next to each
other. A run loads the backbone (its cache in that dtype must exist: the first load of a
dtype converts the GGUF once), trains a 20-token soft prompt on movie-sentiment for
--steps steps of --batch-size rows, and reports the peak RSS growth from before the load
(VmHWM), the frozen weights' bytes (NF4's packed 4-bit data with its scales), and the
median step time. In the first round it then scores zero-shot: the label log-probs of the
first --logprob-rows test rows (compared with float32's) and, with --test-rows N, the
template's accuracy on a seeded class-stratified N of the test rows. --variants picks
the variants (float32 first): float32, bf16, int8, int8-bf16, nf4, nf4-bf16 (int8 and
nf4 keep float32 activations; -bf16 holds the rest in bf16). Prints a Markdown table
and writes benchmarks/results/dtype_memory.json: the arguments, a summary row a variant
("rows") and every run's raw figures ("runs", as benchmarks/nf4_memory.py wrote them
before it was folded in here).

    python benchmarks/dtype_memory.py [--steps 6] [--rounds 2] [--batch-size 8]
    python benchmarks/dtype_memory.py --backbone qwen2.5-coder-0.5b --variants \
        float32,nf4,int8 --steps 2 --batch-size 4 --rounds 1 --test-rows 200

Measured 2026-12-06 (--steps 2 --rounds 2, batch 8, one thread, the machine under heavy
load, so step times are rough), with int8 quantized as it loads: frozen weights 513 / 257 /
210 / 156 MB; peak RSS growth while training 1097 MB (float32), 623 MB (bf16, 0.57x),
983 MB (int8 with float32 activations, 0.90x; 1.20x when int8 quantized after a full
float load) and 576 MB (int8 + bf16, 0.52x; was 0.71x). Zero-shot label log-probs on 64
test rows, max abs diff vs float32: bf16 0.096, int8 0.292, int8 + bf16 0.200. The NF4
figures on Qwen2.5-Coder-0.5B are in docs/scaling.md (measured with nf4_memory.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from softprompt.files import atomic_write_text

ZERO_SHOT_ROWS = 64  # test rows whose zero-shot label log-probs are compared with float32

VARIANTS = {  # --variants key -> (name in the table and the JSON, dtype, quantize)
    "float32": ("float32", "float32", None),
    "bf16": ("bfloat16", "bfloat16", None),
    "int8": ("int8 (float32 activations)", "float32", "int8"),
    "int8-bf16": ("int8 + bfloat16", "bfloat16", "int8"),
    "nf4": ("nf4 (float32 activations)", "float32", "nf4"),
    "nf4-bf16": ("nf4 + bfloat16", "bfloat16", "nf4"),
}
DEFAULT_VARIANTS = "float32,bf16,int8,int8-bf16"


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def one_run(
    dtype: str,
    quantize: str | None,
    steps: int,
    batch_size: int,
    backbone_name: str = "smollm2-135m",
    zero_shot_rows: int = ZERO_SHOT_ROWS,
    test_rows: int = 0,
) -> dict:
    """Load, train `steps` steps, measure, score zero-shot; runs inside the child process.
    The zero-shot scores are deterministic, so later rounds pass `zero_shot_rows=0` and
    `test_rows=0` and save the time."""
    import torch

    from softprompt.api import build_model
    from softprompt.backbones import load_backbone
    from softprompt.data import load_dataset
    from softprompt.tasks.presets import task_defaults

    torch.manual_seed(0)
    data = load_dataset("movie-sentiment")
    task = task_defaults("movie-sentiment")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # peak := now, so the figure is what the backbone and training add
    before = _status("VmRSS")
    start = time.perf_counter()
    backbone = load_backbone(backbone_name, dtype=dtype, quantize=quantize)
    load_s = time.perf_counter() - start
    loaded, resident = _status("VmHWM") - before, _status("VmRSS") - before
    model = build_model(backbone, data, {"name": "soft-prompt", "n_tokens": 20}, task)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=3e-2)
    times = []
    for step in range(steps):
        rows = data.train[step * batch_size : (step + 1) * batch_size]
        start = time.perf_counter()
        loss = model(model.collate(rows)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    train_peak = _status("VmHWM") - before  # before the zero-shot pass below
    del model, optimizer
    start = time.perf_counter()
    scored = _zero_shot(build_model(backbone, data, {"name": "none"}, task), data,
                        zero_shot_rows, test_rows)  # fmt: skip
    return {
        "load_s": load_s,
        "load_peak_bytes": loaded,
        "loaded_bytes": resident,
        "train_peak_bytes": train_peak,
        "weight_bytes": _weight_bytes(backbone.model),
        "step_s": statistics.median(times[1:] if len(times) > 1 else times),
        **scored,
        "zero_shot_s": time.perf_counter() - start,
    }


def _zero_shot(model, data, logprob_rows: int, test_rows: int) -> dict:
    """The label log-probs of the first `logprob_rows` test rows (batches of 16), and the
    accuracy on a seeded class-stratified `test_rows` of all the test rows (NaN when 0)."""
    import torch

    from softprompt.evaluate import evaluate
    from softprompt.recipes.run import sample_rows

    with torch.no_grad():
        texts = [e.text for e in data.test[:logprob_rows]]
        label_logprobs = [
            [math.log(max(p["scores"][k], 1e-30)) for k in sorted(p["scores"])]
            for i in range(0, len(texts), 16)
            for p in model.predict(texts[i : i + 16])
        ]
        scores = (
            evaluate(model, sample_rows(data.test, test_rows), batch_size=16) if test_rows else {}
        )
    return {
        "zero_shot_label_logprobs": label_logprobs,
        "zero_shot_accuracy": scores.get("accuracy", float("nan")),
    }


def _weight_bytes(model) -> int:
    """The frozen weights as held: plain tensors, torchao's parts, or bitsandbytes' packed
    4-bit data with its scales (quant_state)."""
    total = 0
    for p in {id(p): p for p in model.parameters()}.values():
        if getattr(p, "quant_state", None) is not None:
            parts = [p.data, *p.quant_state.as_dict(packed=True).values()]
            total += sum(t.numel() * t.element_size() for t in parts if hasattr(t, "numel"))
        elif type(p).__name__ == "Parameter":
            total += p.numel() * p.element_size()
        else:
            names, _ = p.__tensor_flatten__()
            total += sum(getattr(p, n).numel() * getattr(p, n).element_size() for n in names)
    return total


def _child(key: str, args: argparse.Namespace, first_round: bool) -> dict:
    _, dtype, quantize = VARIANTS[key]
    call = (dtype, quantize, args.steps, args.batch_size, args.backbone,
            args.logprob_rows if first_round else 0, args.test_rows if first_round else 0)  # fmt: skip
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); import dtype_memory as d; "
        f"print(json.dumps(d.one_run(*{call!r})))"
    )
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{VARIANTS[key][0]}: the run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ensure_caches(backbone_name: str, keys: list[str]) -> None:
    """Convert the GGUF into each dtype's cache once, before any measured run, in a child
    process of its own: a conversion's memory would otherwise stay with this parent while
    the measured children run beside it."""
    for dtype in sorted({VARIANTS[k][1] for k in keys}):
        code = f"from softprompt.backbones import load_backbone; load_backbone({backbone_name!r}, dtype={dtype!r})"
        subprocess.run([sys.executable, "-c", code], check=True)


def _count(raw: str, least: int = 0) -> int:
    value = int(raw)
    if value < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
    return value


def _positive(raw: str) -> int:
    return _count(raw, 1)


def _variants(raw: str) -> list[str]:
    keys = raw.split(",")
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown or keys[0] != "float32" or len(set(keys)) != len(keys):
        raise argparse.ArgumentTypeError(
            f"{raw!r}: give distinct variants, float32 first, from {', '.join(VARIANTS)}"
        )
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=_positive, default=6, help="training steps per run")
    parser.add_argument("--rounds", type=_positive, default=2, help="interleaved rounds")
    parser.add_argument("--batch-size", type=_positive, default=8)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--variants", type=_variants, default=DEFAULT_VARIANTS,
                        help=f"comma-separated, float32 first: {', '.join(VARIANTS)}")  # fmt: skip
    parser.add_argument("--logprob-rows", type=_count, default=ZERO_SHOT_ROWS,
                        help="test rows whose zero-shot label log-probs are compared")  # fmt: skip
    parser.add_argument("--test-rows", type=_count, default=0,
                        help="zero-shot accuracy on this many test rows (0: none)")  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results/dtype_memory.json")
    args = parser.parse_args()
    _ensure_caches(args.backbone, args.variants)
    runs: dict[str, list[dict]] = {VARIANTS[k][0]: [] for k in args.variants}
    for round_ in range(args.rounds):
        for key in args.variants:  # A B C D, A B C D: neighbours share the machine's mood
            name = VARIANTS[key][0]
            runs[name].append(_child(key, args, first_round=round_ == 0))
            print(f"round {round_ + 1} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
        _report(runs, args)  # after every round, so a cut-short run still leaves its rounds


def _summary(got: list[dict], base: list[dict]) -> dict:
    """One variant's row: medians over the rounds, ratios against float32's run of the
    same round, zero-shot figures from the first round."""
    reference = base[0]["zero_shot_label_logprobs"]
    diffs = [
        abs(a - b)
        for row, ref in zip(got[0]["zero_shot_label_logprobs"], reference, strict=True)
        for a, b in zip(row, ref, strict=True)
    ]
    peak_ratio = [
        g["train_peak_bytes"] / f["train_peak_bytes"] for g, f in zip(got, base, strict=True)
    ]
    return {
        "weight_mb": got[0]["weight_bytes"] / 2**20,
        "load_peak_mb": statistics.median(g["load_peak_bytes"] for g in got) / 2**20,
        "loaded_mb": statistics.median(g["loaded_bytes"] for g in got) / 2**20,
        "load_s": statistics.median(g["load_s"] for g in got),
        "train_peak_mb": statistics.median(g["train_peak_bytes"] for g in got) / 2**20,
        "step_s": statistics.median(g["step_s"] for g in got),
        "step_ratio_vs_float32": statistics.median(
            g["step_s"] / f["step_s"] for g, f in zip(got, base, strict=True)
        ),
        "zero_shot_max_logprob_diff": max(diffs, default=float("nan")),
        "zero_shot_accuracy": got[0]["zero_shot_accuracy"],
        "train_peak_mb_per_round": [g["train_peak_bytes"] / 2**20 for g in got],
        "train_peak_ratio_per_round": peak_ratio,  # vs float32 in the same round
        "train_peak_ratio_median": statistics.median(peak_ratio),
        "step_s_per_round": [g["step_s"] for g in got],
    }


def _report(runs: dict[str, list[dict]], args: argparse.Namespace) -> None:
    runs = {name: got for name, got in runs.items() if got}
    rounds = min(len(got) for got in runs.values())
    runs = {name: got[:rounds] for name, got in runs.items()}
    rows = [{"variant": name, **_summary(got, runs["float32"])} for name, got in runs.items()]
    base = rows[0]
    print("| backbone held in | frozen weights | load peak | loaded | peak RSS growth, training "
          "(x float32) | step time (x float32, interleaved) | zero-shot label log-prob, "
          f"max diff vs float32 ({args.logprob_rows} test rows) | zero-shot accuracy "
          f"({args.test_rows or 'no'} test rows) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['weight_mb']:.0f} MB | {r['load_peak_mb']:.0f} MB "
              f"| {r['loaded_mb']:.0f} MB | {r['train_peak_mb']:.0f} MB "
              f"({r['train_peak_mb'] / base['train_peak_mb']:.2f}x) | {r['step_s']:.2f} s "
              f"({r['step_ratio_vs_float32']:.2f}x) | {r['zero_shot_max_logprob_diff']:.4f} "
              f"| {r['zero_shot_accuracy']:.3f} |")  # fmt: skip
    record = {"n_tokens": 20, **vars(args), "rounds_done": rounds, "rows": rows, "runs": runs}
    atomic_write_text(Path(args.out), json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
