"""Training curves as a PNG beside the prompt file: people look, not read."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from softprompt.files import atomic_write_bytes


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
    for task, rows in _by_task(evals).items():
        left.plot(
            [h["step"] for h in rows],
            [h["loss"] for h in rows],
            "o-",
            label=f"val loss {task}".strip(),
        )
    left.set_xlabel("step")
    left.set_ylabel("loss")
    left.legend()
    _plot_accuracy(right, train, evals)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, image.getvalue())  # a crash mid-plot never leaves half a PNG
    return path


def _by_task(evals: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Evaluation records per task (a one-task run logs no task name: one series "")."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in evals:
        groups.setdefault(record.get("task", ""), []).append(record)
    return groups


def _plot_accuracy(axes: Any, train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> None:
    """Train accuracy (20-step mean: one batch is a handful of rows) and validation accuracy."""
    scored = [h for h in train if "accuracy" in h]
    if scored:
        settled = min(5, len(scored) - 1)  # the first few means cover one or two batches
        axes.plot(
            [h["step"] for h in scored][settled:],
            _moving_average([h["accuracy"] for h in scored], 20)[settled:],
            lw=1.8,
            color="tab:blue",
            label="train accuracy (20-step mean)",
        )
    for task, rows in _by_task(evals).items():
        key = "entity_f1" if "entity_f1" in rows[0] else "accuracy"
        if key in rows[0]:
            axes.plot(
                [h["step"] for h in rows],
                [h[key] for h in rows],
                "o-",
                label=f"val {key.replace('_', ' ')} {task}".strip(),
            )
    if scored or (evals and "accuracy" in evals[0]):
        axes.set_ylabel("accuracy")
        axes.legend()
    axes.set_xlabel("step")
