"""Do soft prompts from different inits that score the same make the same predictions?

The budget-24 search table shows four soft-prompt inits at one test accuracy. This
re-trains two of them with the table's settings (SmolLM2-135M, movie-sentiment,
20 virtual tokens, 40 steps of 8, lr 3e-2, seed 0) and compares their predictions
row by row on the table's 200 test rows: the same count with different rows right is
two prompts; every row the same would point to one prompt reported twice.

    OMP_NUM_THREADS=1 python benchmarks/soft_init_agreement.py --inits random labels
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.search.run import sample  # noqa: E402
from softprompt.tasks.presets import task_defaults  # noqa: E402
from softprompt.train import TrainConfig, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="movie-sentiment")
    parser.add_argument(
        "--inits",
        nargs=2,
        default=["random", "labels"],
        choices=["random", "vocab", "labels"],
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--test-examples", type=int, default=200)
    args = parser.parse_args()
    if args.steps < 1 or args.test_examples < 1:
        parser.error("--steps and --test-examples: expected positive integers")
    if args.inits[0] == args.inits[1]:
        parser.error(f"--inits: name two different inits, got {args.inits[0]!r} twice")
    torch.set_num_threads(1)
    backbone = load_backbone("smollm2-135m")
    data = load_dataset(args.dataset)
    task = task_defaults(args.dataset)
    test = sample(data.test, args.test_examples)  # the search table's test rows
    right = {}
    for init in args.inits:
        model = build_model(
            backbone, data, {"name": "soft-prompt", "n_tokens": 20, "init": init}, task
        )
        config = TrainConfig(steps=args.steps, batch_size=8, lr=3e-2, seed=0,
                             warmup_steps=min(10, args.steps // 4), eval_every=args.steps,
                             eval_examples=32)  # fmt: skip
        with tempfile.TemporaryDirectory() as folder:
            result = train(model, data, config, Path(folder) / "run", progress=False)
            tuned = type(model).load(result.prompt_path, backbone)
        with torch.no_grad():
            out = tuned(tuned.collate(test))
        right[init] = out.scores.argmax(-1) == out.targets  # (N,)
        print(f"{init}: test accuracy {right[init].float().mean():.3f}", flush=True)
    a, b = right.values()
    print(f"rows both right or both wrong: {(a == b).float().mean():.3f}")


if __name__ == "__main__":
    main()
