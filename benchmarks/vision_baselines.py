"""Fashion-MNIST test accuracy on dinov2-small: head-only, VPT-shallow, VPT-deep, LoRA, full FT.

A front over `softprompt compare` (softprompt/recipes/compare.py) with the table's
settings; the same grid as the command

    softprompt compare --backbone dinov2-small --dataset fashion-mnist --image-size 56 \\
        --methods head-only,vpt-shallow,vpt-deep,lora,full --seeds 3 --seed-init \\
        --steps 150 --batch-size 16 --lr 0.01 --warmup-steps 10 --eval-every 50 \\
        --eval-examples 300 --out runs/vision_baselines

Every unit trains the same linear head on [CLS] with the one training loop, steps, batch
size, learning rate, warmup and data order (the seed); VPT (10 tokens, per layer for
deep) also trains its prompt, LoRA (PEFT r=8, alpha 2 on q/v) its adapters, full
fine-tuning every backbone weight at lr x 3e-3 (recipes/baselines.py). `--seed-init`:
the seed also seeds the prompt's and LoRA's initialization. The best checkpoint on the
first 300 validation images is scored on all 10,000 test images.

Units are compare's (OUT/units/<method>-s<seed>/, normal run folders): a cut run goes
on where it stopped when the same command runs again, and a finished grid prints its
table again without training. `--record` copies the finished table, JSON and plot to
benchmarks/results/vision_baselines.{md,json,png}.

    python benchmarks/vision_baselines.py --methods head-only vpt-shallow vpt-deep
    python benchmarks/vision_baselines.py --record     # every method, seeds 0-2
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from softprompt.config import RunConfig, build_run_config  # noqa: E402
from softprompt.files import atomic_write_bytes  # noqa: E402
from softprompt.recipes.compare import CompareConfig, compare  # noqa: E402

METHODS = ("head-only", "vpt-shallow", "vpt-deep", "lora", "full")
RESULTS = Path(__file__).parent / "results" / "vision_baselines"  # + .md, .json, .png


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """The training setting the vision benchmarks share (this table and vpt_sweep.py)."""
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2, help="head (and prompt) learning rate")
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")


def run_config(
    args: argparse.Namespace, out: str, method: dict[str, Any] | None = None
) -> RunConfig:
    """dinov2-small on fashion-mnist with the shared setting (`method`: the prompt's
    options where one method is run with options of its own)."""
    train = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_steps": 10,
        "eval_every": args.eval_every,
        "eval_examples": args.eval_examples,
        "eval_batch_size": 64,
    }
    values = {
        "backbone": "dinov2-small",
        "data": "fashion-mnist",
        "task": {"image_size": args.image_size},
        "train": train,
        "out": out,
    }
    return build_run_config({**values, "method": method} if method else values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_setting_flags(parser)
    parser.add_argument("--test-examples", type=int, default=0,
                        help="0 = all 10,000; else a fixed seeded sample")  # fmt: skip
    parser.add_argument("--out", default="runs/vision_baselines", help="compare's folder")
    parser.add_argument("--record", action="store_true", help=f"copy the table to {RESULTS}.*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = CompareConfig(
        run=run_config(args, args.out),
        methods=args.methods,
        seeds=args.seeds,
        test_limit=args.test_examples,
        seed_init=True,
    )
    report = compare(config)
    print(report.markdown())
    if args.record and report.complete:
        for suffix in (".md", ".json", ".png"):
            source = (Path(args.out) / "compare").with_suffix(suffix)
            atomic_write_bytes(RESULTS.with_suffix(suffix), source.read_bytes())


if __name__ == "__main__":
    main()
