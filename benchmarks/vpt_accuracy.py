"""Fashion-MNIST accuracy of the linear probe, VPT-shallow and VPT-deep on dinov2-small.

Every method trains the same linear head on [CLS] with the same training loop, steps,
batch size, learning rate and data order (seed); VPT methods also train their prompt.
The best checkpoint on validation (fixed 1,000-image split) is scored on the test
images. Writes a JSON record and a plot to benchmarks/results/.

    python benchmarks/vpt_accuracy.py --steps 150 --seeds 0 --test-examples 1000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.evaluate import evaluate  # noqa: E402
from softprompt.model import PromptModel  # noqa: E402
from softprompt.train import TrainConfig, train  # noqa: E402

METHODS = {
    "head-only (linear probe)": {"name": "none"},
    "vpt-shallow": {"name": "vpt-shallow", "n_tokens": 10},
    "vpt-deep": {"name": "vpt-deep", "n_tokens": 10},
}


def parse_variant(text: str) -> tuple[str, dict]:
    """`label=method,key=value,...`, e.g. `deep-50=vpt-deep,n_tokens=50,lr_scale=3`."""
    label, _, spec = text.partition("=")
    name, *pairs = spec.split(",")
    options: dict = {"name": name}
    for pair in pairs:
        key, _, value = pair.partition("=")
        options[key] = float(value) if "." in value or "e" in value else int(value)
    return label, options


def one_run(backbone, data, method, seed, args) -> dict:
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=10,
        eval_every=args.eval_every,
        eval_examples=args.eval_examples,
        seed=seed,
    )
    model = build_model(
        backbone,
        data,
        {**method, "seed": seed} if method["name"] != "none" else method,
        {"image_size": args.image_size},
    )
    with tempfile.TemporaryDirectory() as out:
        result = train(model, data, config, out, progress=False)
        best = PromptModel.load(result.prompt_path, backbone)
        size = result.prompt_path.stat().st_size
    test = data.test[: args.test_examples or None]
    tick = time.perf_counter()
    scores = evaluate(best, test, batch_size=32)
    return {
        "seed": seed,
        "test_accuracy": scores["accuracy"],
        "test_macro_f1": scores["macro_f1"],
        "test_examples": scores["examples"],
        "best_step": result.best_step,
        "validation_accuracy": result.best_metric,
        "trainable_parameters": best.num_trainable(),
        "file_bytes": size,
        "train_seconds": result.seconds,
        "test_seconds": time.perf_counter() - tick,
    }


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, row in enumerate(summary):
        accs = [r["test_accuracy"] for r in row["runs"]]
        ax.bar(i, statistics.mean(accs), color="C0" if i else "C7")
        ax.plot([i] * len(accs), accs, "k.", ms=6)
    ax.set_xticks(range(len(summary)), [r["method"] for r in summary], fontsize=8)
    low = min(r["test_accuracy"] for s in summary for r in s["runs"])
    ax.set_ylim(max(0.0, low - 0.1), 1.0)
    ax.set_ylabel("test accuracy")
    ax.set_title("dinov2-small on fashion-mnist, same steps and head", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--test-examples", type=int, default=1000, help="0 = all 10,000")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None, help="method labels to run")
    parser.add_argument("--variant", action="append", default=[], help=parse_variant.__doc__)
    parser.add_argument("--out", default="benchmarks/results/vpt_accuracy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    methods = dict(METHODS)
    methods.update(parse_variant(v) for v in args.variant)
    if args.only is not None:
        methods = {k: v for k, v in methods.items() if k in args.only}
    backbone = load_backbone("dinov2-small")
    data = load_dataset("fashion-mnist")
    summary = []
    print(
        f"dinov2-small, fashion-mnist, {args.image_size} px, {args.steps} steps of "
        f"{args.batch_size}, lr {args.lr}, test images {args.test_examples or len(data.test)}"
    )
    print("| method | test accuracy (mean, min-max) | seeds | trainable params | file size |")
    print("|---|---|---|---|---|")
    for label, method in methods.items():
        runs = [one_run(backbone, data, method, seed, args) for seed in args.seeds]
        accs = [r["test_accuracy"] for r in runs]
        summary.append({"method": label, "options": method, "runs": runs})
        print(
            f"| {label} | {statistics.mean(accs):.4f} ({min(accs):.4f}-{max(accs):.4f}) | "
            f"{len(runs)} | {runs[0]['trainable_parameters']:,} | "
            f"{runs[0]['file_bytes'] / 1024:.1f} KiB |",
            flush=True,
        )
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {"args": vars(args), "summary": summary}
        out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    plot(summary, Path(args.out).with_suffix(".png"))


if __name__ == "__main__":
    main()
