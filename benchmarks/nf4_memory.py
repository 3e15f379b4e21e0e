"""NF4 on CPU (issue 19): peak memory and step time of soft-prompt training with the frozen
backbone in float32, 4-bit NF4 (bitsandbytes) or int8 (torchao), and zero-shot accuracy.

Each run is its own process (a process's peak RSS only grows), started in rounds that
interleave the variants, because step times on this shared 2-core machine drift from
minute to minute: the step-time ratio against float32 is the median of the ratios of runs
next to each other. A run loads the backbone, trains a 20-token soft prompt on
movie-sentiment for --steps steps of --batch-size rows, then scores the template's
zero-shot accuracy on a seeded class-stratified sample of --test-rows test rows.
benchmarks/dtype_memory.py measures the dtypes the same way (without nf4).

    python benchmarks/nf4_memory.py --backbone qwen2.5-coder-0.5b --steps 2 --batch-size 4

Measured 2026-12-06 on Qwen2.5-Coder-0.5B (batch 4, one thread, shared machine; MiB):
training peak RSS growth float32 2615, nf4 1852 (0.71x), int8 1230 (0.47x), nf4 + bf16
1109 (0.42x); nf4 step time 1.95x float32 (1.16x with bf16; 2 interleaved rounds);
zero-shot accuracy on 200 test rows 0.830 / 0.790 / 0.830 (float32 / nf4 / int8).
Results in benchmarks/results/nf4_memory_0.5b.json and nf4_timing_0.5b.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = {  # name -> (dtype, quantize)
    "float32": ("float32", None),
    "nf4 (float32 activations)": ("float32", "nf4"),
    "int8 (float32 activations)": ("float32", "int8"),
    "nf4 + bfloat16": ("bfloat16", "nf4"),
}


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _weight_bytes(model) -> int:
    """The frozen weights as held: plain tensors, torchao's parts, or bitsandbytes' packed
    4-bit data with its scales (quant_state)."""
    total = 0
    for p in {id(p): p for p in model.parameters()}.values():
        if hasattr(p, "quant_state") and p.quant_state is not None:
            parts = [p.data, *p.quant_state.as_dict(packed=True).values()]
            total += sum(t.numel() * t.element_size() for t in parts if hasattr(t, "numel"))
        elif type(p).__name__ == "Parameter":
            total += p.numel() * p.element_size()
        else:
            names, _ = p.__tensor_flatten__()
            total += sum(getattr(p, n).numel() * getattr(p, n).element_size() for n in names)
    return total


def one_run(
    dtype: str, quantize: str | None, steps: int, batch_size: int, backbone: str, rows: int
) -> dict:
    """Load, train `steps` steps, score zero-shot; runs inside the child process."""
    import torch

    from softprompt.api import build_model
    from softprompt.backbones import load_backbone
    from softprompt.data import load_dataset
    from softprompt.evaluate import evaluate
    from softprompt.recipes.run import sample_rows
    from softprompt.tasks.presets import task_defaults

    torch.manual_seed(0)
    data = load_dataset("movie-sentiment")
    task = task_defaults("movie-sentiment")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # peak := now: the figure is what the backbone and training add
    before = _status("VmRSS")
    start = time.perf_counter()
    held = load_backbone(backbone, dtype=dtype, quantize=quantize)
    load_s = time.perf_counter() - start
    loaded, resident = _status("VmHWM") - before, _status("VmRSS") - before
    model = build_model(held, data, {"name": "soft-prompt", "n_tokens": 20}, task)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=3e-2)
    times = []
    for step in range(steps):
        batch = data.train[step * batch_size : (step + 1) * batch_size]
        start = time.perf_counter()
        loss = model(model.collate(batch)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    train_peak = _status("VmHWM") - before
    del model, optimizer
    zero_shot = build_model(held, data, {"name": "none"}, task)
    start = time.perf_counter()
    with torch.no_grad():  # --test-rows 0: no zero-shot pass (timing runs)
        scores = evaluate(zero_shot, sample_rows(data.test, rows), batch_size=16) if rows else {}
    return {
        "load_s": load_s,
        "load_peak_bytes": loaded,
        "loaded_bytes": resident,
        "train_peak_bytes": train_peak,
        "weight_bytes": _weight_bytes(held.model),
        "step_s": statistics.median(times[1:] if len(times) > 1 else times),
        "zero_shot_accuracy": scores.get("accuracy", float("nan")),
        "zero_shot_s": time.perf_counter() - start,
    }


def _child(name: str, args: argparse.Namespace) -> dict:
    call = (*VARIANTS[name], args.steps, args.batch_size, args.backbone, args.test_rows)
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); import nf4_memory as n; "
        f"print(json.dumps(n.one_run(*{call!r})))"
    )
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{name}: the run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--test-rows", type=int, default=200)
    parser.add_argument("--variants", default="float32,nf4,int8",
                        help="comma-separated: float32, nf4, int8, nf4-bf16 (float32 first)")  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results/nf4_memory.json")
    args = parser.parse_args()
    names = dict(zip(["float32", "nf4", "int8", "nf4-bf16"], VARIANTS, strict=True))
    chosen = [names[v] for v in args.variants.split(",")]
    runs: dict[str, list[dict]] = {name: [] for name in chosen}
    for round_ in range(args.rounds):
        for name in chosen:  # A B C, A B C: neighbours share the machine's mood
            runs[name].append(_child(name, args))
            print(f"round {round_ + 1} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    mb = 2**20
    base = runs["float32"]
    print("| frozen weights | held | load peak | loaded | training peak (x float32) "
          "| step time x float32 | zero-shot accuracy |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, got in runs.items():
        peak = statistics.median(g["train_peak_bytes"] for g in got)
        ratio = statistics.median(g["step_s"] / f["step_s"] for g, f in zip(got, base, strict=True))
        print(
            f"| {name} | {got[0]['weight_bytes'] / mb:.0f} MB "
            f"| {statistics.median(g['load_peak_bytes'] for g in got) / mb:.0f} MB "
            f"| {statistics.median(g['loaded_bytes'] for g in got) / mb:.0f} MB "
            f"| {peak / mb:.0f} MB ({peak / statistics.median(b['train_peak_bytes'] for b in base):.2f}) "
            f"| {ratio:.2f} | {got[0]['zero_shot_accuracy']:.3f} |"
        )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"args": vars(args), "runs": runs}, handle, indent=1)


if __name__ == "__main__":
    main()
