"""A small validation sweep for VPT on dinov2-small / fashion-mnist: when do prompts help?

Same loop, head, steps, batch, head learning rate and data order as
benchmarks/vision_baselines.py (its flags and run config: `add_setting_flags`,
`run_config`); only the prompt's settings change (length, and its learning rate through
`lr_scale` = prompt lr / head lr). Scores are the best accuracy on the first
`--eval-examples` validation images (never the test split). Each variant writes its own
JSON under --out-dir as it finishes (a cut run keeps those).

Not a `softprompt compare` grid: a compare unit is one method name at one seed, scored
on the test split, while a sweep runs one method under several option sets and must
not look at the test split.

    python benchmarks/vpt_sweep.py \\
        --variant probe=none --variant deep=vpt-deep \\
        --variant deep-lr0.1=vpt-deep,lr_scale=0.1 --variant shallow-lr0.1=vpt-shallow,lr_scale=0.1
    python benchmarks/vpt_sweep.py --summarize
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from vision_baselines import add_setting_flags, run_config  # noqa: E402  (benchmarks/)

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.train import train  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict]:
    """`label=method,key=value,...`, e.g. `deep-50=vpt-deep,n_tokens=50,lr_scale=0.1`."""
    label, _, spec = text.partition("=")
    name, *pairs = spec.split(",")
    options: dict = {"name": name}
    for pair in pairs:
        key, _, value = pair.partition("=")
        options[key] = float(value) if "." in value or "e" in value else int(value)
    return label, options


def one_variant(backbone, data, method: dict, args) -> dict:
    with tempfile.TemporaryDirectory() as out:
        run = run_config(args, out, method)
        config = dataclasses.replace(run.train, seed=args.seed)
        model = build_model(backbone, data, run.method, run.task)
        result = train(model, data, config, out, progress=False)
        curve = (
            [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
            if (Path(out) / "metrics.jsonl").is_file()
            else []
        )
    return {
        "method": method,
        "validation_accuracy": result.best_metric,
        "best_step": result.best_step,
        "train_seconds": result.seconds,
        "curve": curve,
        "setup": {k: getattr(args, k) for k in SETUP},
    }


SETUP = ("steps", "batch_size", "lr", "image_size", "eval_every", "eval_examples", "seed")


def summarize(out_dir: Path) -> None:
    rows = [(p.stem, json.loads(p.read_text())) for p in sorted(out_dir.glob("*.json"))]
    lines = [
        "| variant | method options | best validation accuracy | at step |",
        "|---|---|---|---|",
    ]
    for label, r in rows:
        options = ", ".join(f"{k}={v}" for k, v in r["method"].items())
        lines.append(f"| {label} | {options} | {r['validation_accuracy']:.4f} | {r['best_step']} |")
    if rows:
        s = rows[0][1]["setup"]
        print(
            f"{s['steps']} steps of {s['batch_size']}, head lr {s['lr']}, {s['image_size']} px, "
            f"seed {s['seed']}, first {s['eval_examples']} validation images"
        )
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], help=parse_variant.__doc__)
    add_setting_flags(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="benchmarks/results/vpt_sweep")
    parser.add_argument("--summarize", action="store_true")
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    if args.summarize:
        summarize(out_dir)
        return
    torch.set_num_threads(args.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone("dinov2-small")
    data = load_dataset("fashion-mnist")
    for label, method in map(parse_variant, args.variant):
        path = out_dir / f"{label}.json"
        if path.is_file():
            continue
        if method["name"] != "none":
            method = {**method, "seed": args.seed}
        row = one_variant(backbone, data, method, args)
        path.with_suffix(".tmp").write_text(json.dumps(row, indent=1) + "\n")
        path.with_suffix(".tmp").replace(path)
        print(f"{label}: validation {row['validation_accuracy']:.4f}", flush=True)


if __name__ == "__main__":
    main()
