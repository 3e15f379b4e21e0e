"""Peak memory and step time of prompt training with the frozen backbone (SmolLM2-135M,
or `--backbone`) held in float32, bf16 or int8 (issue 19: `--dtype`, `--quantize`).

Each run is its own process (a process's peak RSS only grows), started in rounds that
interleave the variants (A B C A B C ...), because timings on this shared 2-core machine
drift from minute to minute: ratios against float32 are quoted from runs next to each
other. A run loads the backbone (its cache in that dtype must exist: the first load of a
dtype converts the GGUF once), trains a 20-token soft prompt on movie-sentiment for
--steps steps of --batch-size rows, and reports the peak RSS growth from before the load
(VmHWM), the frozen weights' bytes, and the median step time. Prints a Markdown table
and writes benchmarks/results/dtype_memory.json.

    python benchmarks/dtype_memory.py [--steps 6] [--rounds 2] [--batch-size 8]

Measured 2026-12-06 (--steps 2 --rounds 2, batch 8, one thread, the machine under heavy
load, so step times are rough), with int8 quantized as it loads: frozen weights 513 / 257 /
210 / 156 MB; peak RSS growth while training 1097 MB (float32), 623 MB (bf16, 0.57x),
983 MB (int8 with float32 activations, 0.90x; 1.20x when int8 quantized after a full
float load) and 576 MB (int8 + bf16, 0.52x; was 0.71x). Zero-shot label log-probs on 64
test rows, max abs diff vs float32: bf16 0.096, int8 0.292, int8 + bf16 0.200.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

from softprompt.files import atomic_write_text

ZERO_SHOT_ROWS = 64  # test rows whose zero-shot label log-probs are compared with float32

VARIANTS = {
    "float32": {"dtype": "float32", "quantize": None},
    "bfloat16": {"dtype": "bfloat16", "quantize": None},
    "int8 (float32 activations)": {"dtype": "float32", "quantize": "int8"},
    "int8 + bfloat16": {"dtype": "bfloat16", "quantize": "int8"},
}


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
) -> dict:
    """Load, train `steps` steps, measure; runs inside the child process. The zero-shot
    scores are deterministic, so later rounds pass `zero_shot_rows=0` and save the time."""
    import time

    import torch

    from softprompt.api import build_model
    from softprompt.backbones import load_backbone
    from softprompt.data import load_dataset
    from softprompt.tasks.presets import task_defaults

    torch.manual_seed(0)
    data = load_dataset("movie-sentiment")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # peak := now, so the figure is what the backbone and training add
    before = _status("VmRSS")
    backbone = load_backbone(backbone_name, dtype=dtype, quantize=quantize)
    loaded = _status("VmHWM") - before
    weights = sum(
        t.numel() * t.element_size() if type(t).__name__ == "Parameter" else _quantized_bytes(t)
        for t in {id(p): p for p in backbone.model.parameters()}.values()
    )
    model = build_model(backbone, data, {"name": "soft-prompt", "n_tokens": 20},
                        task_defaults("movie-sentiment"))  # fmt: skip
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=3e-2)
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
    zero_shot = build_model(backbone, data, {"name": "none"}, task_defaults("movie-sentiment"))
    with torch.no_grad():
        texts = [e.text for e in data.test[:zero_shot_rows]]
        label_logprobs = [
            [math.log(max(p["scores"][k], 1e-30)) for k in sorted(p["scores"])]
            for i in range(0, len(texts), 16)
            for p in zero_shot.predict(texts[i : i + 16])
        ]
    del zero_shot
    return {
        "load_peak_bytes": loaded,
        "train_peak_bytes": train_peak,
        "weight_bytes": weights,
        "step_s": statistics.median(times[1:] if len(times) > 1 else times),
        "zero_shot_label_logprobs": label_logprobs,
    }


def _quantized_bytes(t) -> int:
    names, _ = t.__tensor_flatten__()
    return sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in names)


def _child(name: str, args: argparse.Namespace, zero_shot_rows: int) -> dict:
    variant = VARIANTS[name]
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); import dtype_memory as d; "
        f"print(json.dumps(d.one_run({variant['dtype']!r}, {variant['quantize']!r}, "
        f"{args.steps}, {args.batch_size}, {args.backbone!r}, {zero_shot_rows})))"
    )
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{name}: the run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ensure_caches(backbone_name: str) -> None:
    """Convert the GGUF into each dtype's cache once, before any measured run, in a child
    process of its own: a conversion's memory would otherwise stay with this parent while
    the measured children run beside it."""
    for dtype in sorted({v["dtype"] for v in VARIANTS.values()}):
        code = f"from softprompt.backbones import load_backbone; load_backbone({backbone_name!r}, dtype={dtype!r})"
        subprocess.run([sys.executable, "-c", code], check=True)


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=_positive, default=6, help="training steps per run")
    parser.add_argument("--rounds", type=_positive, default=2, help="interleaved rounds")
    parser.add_argument("--batch-size", type=_positive, default=8)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--out", default="benchmarks/results/dtype_memory.json")
    args = parser.parse_args()
    _ensure_caches(args.backbone)
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        for name in VARIANTS:  # A B C D, A B C D: neighbours share the machine's mood
            runs[name].append(_child(name, args, ZERO_SHOT_ROWS if round_ == 0 else 0))
            print(f"round {round_ + 1} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
        _report(runs, args)  # after every round, so a cut-short run still leaves its rounds


def _report(runs: dict[str, list[dict]], args: argparse.Namespace) -> None:
    runs = {name: got for name, got in runs.items() if got}
    rounds = min(len(got) for got in runs.values())
    runs = {name: got[:rounds] for name, got in runs.items()}
    rows = []
    reference = runs["float32"][0]["zero_shot_label_logprobs"]
    for name, got in runs.items():
        drift = max(
            abs(a - b)
            for row, ref in zip(got[0]["zero_shot_label_logprobs"], reference, strict=True)
            for a, b in zip(row, ref, strict=True)
        )
        ratio = [g["step_s"] / f["step_s"] for g, f in zip(got, runs["float32"], strict=True)]
        peaks = [g["train_peak_bytes"] / 2**20 for g in got]
        peak_ratio = [
            g["train_peak_bytes"] / f["train_peak_bytes"]
            for g, f in zip(got, runs["float32"], strict=True)
        ]
        rows.append({
            "variant": name,
            "weight_mb": got[0]["weight_bytes"] / 2**20,
            "load_peak_mb": statistics.median(g["load_peak_bytes"] for g in got) / 2**20,
            "train_peak_mb": statistics.median(g["train_peak_bytes"] for g in got) / 2**20,
            "step_s": statistics.median(g["step_s"] for g in got),
            "step_ratio_vs_float32": statistics.median(ratio),
            "zero_shot_max_logprob_diff": drift,
            "train_peak_mb_per_round": peaks,
            "train_peak_ratio_per_round": peak_ratio,  # vs float32 in the same round
            "train_peak_ratio_median": statistics.median(peak_ratio),
            "step_s_per_round": [g["step_s"] for g in got],
        })  # fmt: skip
    base = rows[0]
    print("| backbone held in | frozen weights | peak RSS growth, training "
          "(x float32) | step time (x float32, interleaved) | zero-shot label log-prob, "
          f"max diff vs float32 ({ZERO_SHOT_ROWS} test rows) |")  # fmt: skip
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['weight_mb']:.0f} MB | {r['train_peak_mb']:.0f} MB "
              f"({r['train_peak_mb'] / base['train_peak_mb']:.2f}x) | {r['step_s']:.2f} s "
              f"({r['step_ratio_vs_float32']:.2f}x) | {r['zero_shot_max_logprob_diff']:.4f} |")  # fmt: skip
    record = {"n_tokens": 20, **vars(args), "rounds_done": rounds, "rows": rows}
    atomic_write_text(Path(args.out), json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
