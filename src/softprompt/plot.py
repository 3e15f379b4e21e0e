"""Training curves as a PNG beside the prompt file: people look, not read. A title says
which run it is, a mark shows the step whose prompt was kept, a dashed line the score
to beat (zero-shot), and each task of a multi-task run gets its own lines."""

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


def plot_curves(
    history: list[dict[str, Any]],
    path: Path,
    *,
    title: str = "training curves",
    zero_shot: dict[str, float] | None = None,
) -> Path | None:
    """Train loss per step and validation metrics per evaluation: a loss panel, and a
    score panel where the task has a score (generation has none: one panel, not an empty
    one). Each task's best step is marked; `zero_shot` (task -> accuracy, "" for a
    one-task run) draws the untrained prompt's score as a dashed line to beat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = curves_figure(history, title=title, zero_shot=zero_shot)
    if figure is None:
        return None
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(path, image.getvalue())  # a crash mid-plot never leaves half a PNG
    return path


def curves_figure(
    history: list[dict[str, Any]],
    *,
    title: str = "training curves",
    zero_shot: dict[str, float] | None = None,
) -> Any:
    """The matplotlib figure `plot_curves` saves (None with nothing logged yet)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    train = [h for h in history if h.get("kind") == "train"]
    evals = [h for h in history if h.get("kind") == "eval"]
    if not train and not evals:
        return None
    scored = any(k in h for h in train + evals for k in HEADLINE)
    fig, panels = plt.subplots(1, 2 if scored else 1, figsize=(10 if scored else 5.5, 3.8))
    left, *rest = panels if scored else [panels]
    _plot_loss(left, train, evals)
    if rest:
        _plot_accuracy(rest[0], train, evals, zero_shot or {})
    for axes in [left, *rest]:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        _mark_best(axes, evals)
        axes.set_xlabel("step")
        axes.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _plot_loss(axes: Any, train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> None:
    steps, losses = [h["step"] for h in train], [h["loss"] for h in train]
    axes.plot(steps, losses, lw=0.7, alpha=0.35, color="tab:blue", label="train loss")
    if len(losses) >= 10:  # small batches make per-step loss noisy; show the trend too
        axes.plot(
            steps,
            _moving_average(losses, 10),
            lw=1.8,
            color="tab:blue",
            label="train loss (10-step mean)",
        )
    for task, rows in _by_task(evals).items():
        axes.plot(
            [h["step"] for h in rows],
            [h["loss"] for h in rows],
            "o-",
            label=f"val loss {task}".strip(),
        )
    axes.set_ylabel("loss")


# the figure the training loop keeps a best prompt by, in order of preference (as
# train/loop.py's HEADLINE; minus the loss where neither is logged)
HEADLINE = ("entity_f1", "accuracy")


def best_steps(evals: list[dict[str, Any]]) -> dict[str, int]:
    """Each task's best evaluation step, chosen as the training loop chooses it (the first
    step with the highest headline figure), so the mark sits where the kept prompt is."""
    best: dict[str, int] = {}
    for task, rows in _by_task(evals).items():
        figure = [next((r[k] for k in HEADLINE if k in r), -r["loss"]) for r in rows]
        best[task] = rows[figure.index(max(figure))]["step"]
    return best


def _mark_best(axes: Any, evals: list[dict[str, Any]]) -> None:
    for task, step in best_steps(evals).items():
        label = f"best step {task}".strip() + f" ({step})"
        axes.axvline(step, color="tab:green", ls=":", lw=1.2, label=label)


def _by_task(evals: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Evaluation records per task (a one-task run logs no task name: one series "")."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in evals:
        groups.setdefault(record.get("task", ""), []).append(record)
    return groups


def _plot_accuracy(
    axes: Any,
    train: list[dict[str, Any]],
    evals: list[dict[str, Any]],
    zero_shot: dict[str, float],
) -> None:
    """Train accuracy (20-step mean: one batch is a handful of rows), validation accuracy
    (or entity F1) per task, and each task's zero-shot accuracy as a dashed line."""
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
    for task, accuracy in zero_shot.items():
        axes.axhline(accuracy, color="tab:gray", ls="--", lw=1.0, label=f"zero-shot {task}".strip())
    axes.set_ylabel("accuracy")
