"""Training curves as a PNG beside the prompt file: people look, not read."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Train loss per step and validation metrics per evaluation, two panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in history if h.get("kind") == "train"]
    evals = [h for h in history if h.get("kind") == "eval"]
    if not train and not evals:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps, losses = [h["step"] for h in train], [h["loss"] for h in train]
    left.plot(steps, losses, lw=0.7, alpha=0.35, color="tab:blue", label="train loss")
    if len(losses) >= 10:  # small batches make per-step loss noisy; show the trend too
        left.plot(
            steps,
            _moving_average(losses, 10),
            lw=1.8,
            color="tab:blue",
            label="train loss (10-step mean)",
        )
    if evals:
        left.plot(
            [h["step"] for h in evals],
            [h["loss"] for h in evals],
            "o-",
            color="tab:orange",
            label="val loss",
        )
    left.set_xlabel("step")
    left.set_ylabel("loss")
    left.legend()
    if evals and "accuracy" in evals[0]:
        right.plot(
            [h["step"] for h in evals], [h["accuracy"] for h in evals], "o-", color="tab:green"
        )
        right.set_ylabel("validation accuracy")
    right.set_xlabel("step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
