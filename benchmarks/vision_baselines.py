"""Fashion-MNIST test accuracy on dinov2-small: head-only, VPT-shallow, VPT-deep, LoRA, full FT.

Every method trains the same linear head on [CLS] with the same loop, steps, batch size,
head learning rate, warmup and data order (the seed); VPT also trains its prompt, LoRA
its PEFT adapters on the attention q/v projections, full fine-tuning every backbone
weight (softprompt.recipes.baselines). The best checkpoint on validation (the fixed 1,000-image
split, first `--eval-examples`) is scored on ALL 10,000 test images. The linear probe's
test pass reads [CLS] features computed once (the frozen backbone gives the same
features to every seed's head).

Each (method, seed) writes its own JSON under --out-dir as soon as it finishes, and an
existing one is skipped, so a run stopped by its timeout keeps what it finished and the
same command continues it. Runs go seed by seed (every method at seed 0 first).
`--summarize` only reads those JSONs and writes the table (markdown), JSON and plot.

    python benchmarks/vision_baselines.py --methods head-only vpt-shallow vpt-deep
    python benchmarks/vision_baselines.py --methods lora full
    python benchmarks/vision_baselines.py --summarize
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

from softprompt.api import build_model, task_config_for  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.evaluate import evaluate  # noqa: E402
from softprompt.metrics import class_counts, metrics_from_counts  # noqa: E402
from softprompt.model import PromptModel  # noqa: E402
from softprompt.recipes.baselines import TuneConfig, TunedModel  # noqa: E402
from softprompt.train import TrainConfig, train  # noqa: E402

METHODS = {
    "head-only": {"name": "none"},
    "vpt-shallow": {"name": "vpt-shallow", "n_tokens": 10},
    "vpt-deep": {"name": "vpt-deep", "n_tokens": 10},
    "lora": {"baseline": "lora", "r": 8, "alpha": 2.0},
    "full": {"baseline": "full", "backbone_lr_scale": 3e-3},
}
LABELS = {
    "head-only": "head-only (linear probe)",
    "vpt-shallow": "VPT-shallow, 10 tokens",
    "vpt-deep": "VPT-deep, 10 tokens/layer",
    "lora": "LoRA r=8 on q,v (PEFT)",
    "full": "full fine-tuning",
}


def build(backbone, data, key: str, seed: int, image_size: int) -> PromptModel:
    spec = dict(METHODS[key])
    task = {"image_size": image_size}
    if "baseline" in spec:
        kind = spec.pop("baseline")
        return TunedModel(backbone, task_config_for(data, task), TuneConfig(kind=kind, **spec))
    if spec["name"] != "none":
        spec["seed"] = seed
    return build_model(backbone, data, spec, task)


def load_best(path: Path, backbone, key: str) -> PromptModel:
    if "baseline" in METHODS[key]:
        return TunedModel.load(path, backbone)
    return PromptModel.load(path, backbone)


@torch.no_grad()
def test_features(model: PromptModel, examples, cache: Path, batch_size: int) -> torch.Tensor:
    """[CLS] states of the frozen backbone (no prompt) for every test image, cached."""
    from safetensors.torch import load_file, save_file

    if cache.is_file():
        return load_file(cache)["cls"]
    rows = []
    for i in range(0, len(examples), batch_size):
        batch = model.collate(examples[i : i + batch_size])
        states = model.injector.image_states(model.prompt(), batch["pixel_values"])  # (B, T, d)
        rows.append(states[:, 0])  # (B, d)
    features = torch.cat(rows)  # (N, d)
    save_file({"cls": features.contiguous()}, str(cache))
    return features


@torch.no_grad()
def probe_test(model: PromptModel, features: torch.Tensor, examples) -> dict:
    """Test accuracy of a head-only model from cached [CLS] features (same as its forward)."""
    labels = model.task.config.labels
    targets = torch.tensor([labels.index(e.label) for e in examples])
    predicted = model.task.head(features).argmax(-1)  # (N,)
    scores = metrics_from_counts(class_counts(predicted, targets, len(labels)), len(examples))
    return {**scores, "examples": len(examples)}


def one_run(backbone, data, key: str, seed: int, args) -> dict:
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=10,
        eval_every=args.eval_every,
        eval_examples=args.eval_examples,
        eval_batch_size=64,
        seed=seed,
    )
    model = build(backbone, data, key, seed, args.image_size)
    with tempfile.TemporaryDirectory() as out:
        result = train(model, data, config, out, progress=False)
        best = load_best(result.prompt_path, backbone, key)
        size = result.prompt_path.stat().st_size
    del model
    test = data.test[: args.test_examples or None]
    tick = time.perf_counter()
    if key == "head-only":
        cache = Path(args.out_dir) / f"test_cls_{args.image_size}px_{len(test)}.safetensors"
        scores = probe_test(best, test_features(best, test, cache, 64), test)
    else:
        scores = evaluate(best, test, batch_size=64)
    return {
        "method": key,
        "label": LABELS[key],
        "options": METHODS[key],
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
        "setup": {k: getattr(args, k) for k in SETUP},
    }


SETUP = (
    "test_examples",
    "steps",
    "batch_size",
    "lr",
    "image_size",
    "eval_every",
    "eval_examples",
    "threads",
)


def summarize(out_dir: Path) -> None:
    runs = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*_seed*.json"))]
    if not runs:
        raise SystemExit(f"{out_dir}: no run results yet")
    setup = runs[0]["setup"]
    lines = [
        "| method | test accuracy, mean ± sd (min-max) | seeds | test images | "
        "trainable params | file size |",
        "|---|---|---|---|---|---|",
    ]
    summary = []
    for key in METHODS:
        mine = [r for r in runs if r["method"] == key]
        if not mine:
            continue
        accs = [r["test_accuracy"] for r in mine]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        size = mine[0]["file_bytes"]
        shown = f"{size / 2**20:.1f} MiB" if size > 2**20 else f"{size / 1024:.1f} KiB"
        lines.append(
            f"| {LABELS[key]} | {statistics.mean(accs):.4f} ± {sd:.4f} ({min(accs):.4f}-"
            f"{max(accs):.4f}) | {', '.join(str(r['seed']) for r in mine)} | "
            f"{mine[0]['test_examples']:,} | {mine[0]['trainable_parameters']:,} | {shown} |"
        )
        summary.append({"method": key, "label": LABELS[key], "runs": mine})
    table = "\n".join(lines)
    print(
        f"dinov2-small, fashion-mnist, {setup['image_size']} px, {setup['steps']} steps of "
        f"{setup['batch_size']}, head lr {setup['lr']}\n{table}"
    )
    record = {"setup": setup, "table": table, "summary": summary}
    (out_dir.parent / "vision_baselines.json").write_text(json.dumps(record, indent=1) + "\n")
    plot(summary, setup, out_dir.parent / "vision_baselines.png")


def plot(summary: list[dict], setup: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    for i, row in enumerate(summary):
        accs = [r["test_accuracy"] for r in row["runs"]]
        ax.bar(i, statistics.mean(accs), color="C7" if i == 0 else f"C{i}")
        ax.plot([i] * len(accs), accs, "k.", ms=6)
    names = [r["label"].replace(", ", "\n").replace(" (", "\n(") for r in summary]
    ax.set_xticks(range(len(summary)), names, fontsize=7)
    low = min(r["test_accuracy"] for s in summary for r in s["runs"])
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_ylabel("test accuracy (10,000 images)")
    ax.set_title(
        f"dinov2-small, fashion-mnist {setup['image_size']} px, {setup['steps']} steps "
        "(dots: seeds)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2, help="head (and prompt) learning rate")
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-examples", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test-examples", type=int, default=0, help="0 = all 10,000")
    parser.add_argument("--out-dir", default="benchmarks/results/vision_baselines")
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
    for seed in args.seeds:
        for key in args.methods:
            path = out_dir / f"{key}_seed{seed}.json"
            if path.is_file():
                continue
            row = one_run(backbone, data, key, seed, args)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(row, indent=1) + "\n")
            tmp.replace(path)  # atomic: a cut run never leaves half a result
            print(
                f"{key} seed {seed}: test {row['test_accuracy']:.4f} on {row['test_examples']} "
                f"(val {row['validation_accuracy']:.3f} at step {row['best_step']}), "
                f"train {row['train_seconds']:.0f} s, test {row['test_seconds']:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
