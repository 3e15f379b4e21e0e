"""The compare's table: per-method summaries (mean ± sd with min-max over seeds), the
Markdown and JSON it writes and the plot of the metric against trainable parameters.
Pure functions of the unit rows, apart from the atomic writes, so the grid that runs the
units (recipes/compare.py) and anything that reads `compare.json` share one format."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.files import atomic_write_bytes, atomic_write_text
from softprompt.recipes.report import METRIC_TITLES, metric_cell

ZERO_SHOT, HEAD_ONLY = "zero-shot", "head-only"  # the two units that are not methods
SECONDARY = ("rouge_l", "exact_match")  # generation: shown beside the headline BLEU
LABELS = {
    ZERO_SHOT: "zero-shot (no training)",
    HEAD_ONLY: "head-only (linear probe)",
    "lora": "LoRA (PEFT, r=8)",
    "full": "full fine-tuning",
}


@dataclass
class CompareReport:
    """Every unit's row (finished or n/a) and the per-method summary; `complete` is
    False when the compare stopped before its last unit (the files are not written)."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    metric: str
    memory: str
    out: Path
    complete: bool = True
    also: list[str] = field(default_factory=list)  # more metrics, each a mean ± sd column
    grid: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> its lr grid

    def markdown(self) -> str:
        title = METRIC_TITLES.get(self.metric, self.metric)
        more = "".join(f"test {METRIC_TITLES[m]}: mean ± sd | " for m in self.also)
        head = (
            f"| method | test {title}: mean ± sd (min-max) | {more}seeds | trainable params | "
            f"file size | train time | {self.memory} | test time | lr |\n"
            + "|---" * (9 + len(self.also))
            + "|\n"
        )
        lines = [_summary_line(s, self.also) for s in self.summary]
        rows = {r.get("test_rows") for r in self.rows if "test_rows" in r}
        tested = ", ".join(f"{n:,}" for n in sorted(rows)) or "-"
        table = head + "\n".join(lines) + f"\n\ntest rows scored per unit: {tested}\n"
        return table + grid_markdown(self.grid, self.summary)


def grid_markdown(grid: dict[str, dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    """The --lr-grid section: per method, the lr chosen and each lr tried with the
    validation figure its first-seed unit reached (entity F1, accuracy, or minus the
    loss), the chosen one in bold. Empty without a grid."""
    if not grid:
        return ""
    labels = {s["method"]: s["label"] for s in summary}
    lines = [
        "\n## lr grid\n",
        "Each method trained at the first seed at every lr below; the lr with the best "
        "validation figure (entity F1, accuracy, or minus the loss) was chosen for every "
        "seed. Test scores played no part, and the lrs not chosen were not scored on it.\n",
        "| method | chosen lr | validation by lr |",
        "|---|---|---|",
    ]
    for method, record in grid.items():
        tried = ", ".join(_tried_cell(t, record["chosen_lr"]) for t in record["tried"])
        lines.append(f"| {labels.get(method, method)} | {record['chosen_lr']:g} | {tried} |")
    return "\n".join(lines) + "\n"


def _tried_cell(tried: dict[str, Any], chosen: float) -> str:
    value = tried["validation_metric"]
    cell = f"{tried['lr']:g}: {'-' if value is None else format(value, '.3f')}"
    return f"**{cell}**" if tried["lr"] == chosen else cell


def _summary_line(s: dict[str, Any], also: list[str]) -> str:
    lr = _lr_cell(s)
    if "skipped" in s:
        return f"| {s['label']} | n/a: {s['skipped']} |" + " |" * (6 + len(also)) + " - |"
    if "mean" not in s:  # every seed diverged
        return (
            f"| {s['label']} | diverged in {s['diverged']} of {s['diverged']} seeds: "
            f"{s['failed']} |" + " |" * (6 + len(also)) + f" {lr} |"
        )
    m = s["metric"]
    spread = (
        f"{metric_cell(m, s['mean'])} ± {metric_cell(m, s['sd'])} "
        f"({metric_cell(m, s['min'])}-{metric_cell(m, s['max'])})"
    )
    more = "".join(f"{_mean_sd(name, s.get('also', {}).get(name))} | " for name in also)
    memory = f"{s['peak_memory_bytes'] / 2**20:.0f} MiB" if s["peak_memory_bytes"] else "-"
    seeds = f"{s['seeds']} (+{s['diverged']} diverged)" if s.get("diverged") else s["seeds"]
    return (
        f"| {s['label']} | {spread} | {more}{seeds} | {s['trainable_parameters']:,} | "
        f"{s['file_bytes'] / 1024:.1f} KiB | {s['train_seconds']:.1f} s | {memory} | "
        f"{s['test_seconds']:.1f} s | {lr} |"
    )


def _lr_cell(s: dict[str, Any]) -> str:
    """`0.001`, or `0.001 (head 0.01)` when the task head trained at its own lr."""
    if s.get("lr") is None:
        return "-"
    head = f" (head {s['head_lr']:g})" if s.get("head_lr") is not None else ""
    return f"{s['lr']:g}{head}"


def _mean_sd(name: str, spread: dict[str, float] | None) -> str:
    if spread is None:
        return "-"
    return f"{metric_cell(name, spread['mean'])} ± {metric_cell(name, spread['sd'])}"


def headline(rows: list[dict[str, Any]]) -> str:
    """The figure the table leads with: the first of the report's metrics any row has
    (entity F1, accuracy, macro-F1), else the test loss (generation)."""
    return next((m for m in METRIC_TITLES if any(m in r for r in rows)), "loss")


def _spread(values: list[float]) -> dict[str, float]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "max": max(values)}


def summarize(
    method: str, rows: list[dict[str, Any]], metric: str, also: list[str] | None = None
) -> dict[str, Any] | None:
    if not rows:
        return None
    label = LABELS.get(method, method)
    failed = [r for r in rows if "failed" in r]
    scored = [r for r in rows if "skipped" not in r and "failed" not in r]
    if not scored and not failed:
        return {"method": method, "label": label, "skipped": rows[0]["skipped"]}
    lr, head_lr = _lr(rows), _lr(rows, "head_lr")
    lrs = {"lr": lr, **({"head_lr": head_lr} if head_lr is not None else {})}
    if not scored:  # the reason up to what the guard kept and what to do
        reason = failed[0]["failed"].split("; ")[0]
        return {
            "method": method,
            "label": label,
            **lrs,
            "diverged": len(failed),
            "failed": reason,
        }
    values = [float(r[metric]) for r in scored]

    def mean(key: str) -> float:
        return statistics.fmean(float(r[key]) for r in scored)

    more = {
        m: _spread([float(r[m]) for r in scored]) for m in also or [] if all(m in r for r in scored)
    }
    return {
        "method": method,
        "label": label,
        **(lrs if scored[0]["trainable_parameters"] else {"lr": None}),  # zero-shot: none
        "metric": metric,
        **_spread(values),
        **({"also": more} if more else {}),
        "seeds": len(values),
        **({"diverged": len(failed)} if failed else {}),  # not in the mean: no score
        "trainable_parameters": scored[0]["trainable_parameters"],
        "file_bytes": int(mean("file_bytes")),
        "train_seconds": mean("train_seconds"),
        "peak_memory_bytes": int(max(r["peak_memory_bytes"] for r in scored)),
        "test_seconds": mean("test_seconds"),
    }


def _lr(rows: list[dict[str, Any]], key: str = "lr") -> float | None:
    """The lr (or `head_lr`) the method's units trained at (one per method in a compare;
    a unit read back from an older compare may lack its config)."""
    lrs = {r.get("config", {}).get("train", {}).get(key) for r in rows}
    return lrs.pop() if len(lrs) == 1 else None


def write_report(report: CompareReport, config: dict[str, Any]) -> None:
    """OUT/compare.md, compare.json (with `config`, the grid that made it) and compare.png."""
    out = report.out
    atomic_write_text(out / "compare.md", report.markdown())
    payload = {
        "metric": report.metric,
        "also": report.also,
        "memory": report.memory,
        "summary": report.summary,
        "units": report.rows,
        **({"lr_grid": report.grid} if report.grid else {}),
        "config": config,
    }
    atomic_write_text(out / "compare.json", json.dumps(payload, indent=2))
    plot_compare(report.summary, report.metric, out / "compare.png")


def plot_compare(summary: list[dict[str, Any]], metric: str, path: Path) -> Path | None:
    """Metric against trainable parameters (log x), a bar of ± sd and a thin min-max
    line per method. A method with no trainable parameters sits at x = 1."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [s for s in summary if "mean" in s]
    if not points:
        return None
    fig, axes = plt.subplots(figsize=(7, 4.2))
    for s in points:
        x = max(s["trainable_parameters"], 1)
        axes.vlines(x, s["min"], s["max"], lw=0.8, color="grey")
        axes.errorbar(x, s["mean"], yerr=s["sd"], fmt="o", capsize=4)
        axes.annotate(s["label"], (x, s["mean"]), textcoords="offset points", xytext=(6, 4))
    axes.set_xscale("log")
    axes.set_xlim(
        0.5, 10 ** (math.log10(max(max(s["trainable_parameters"], 1) for s in points)) + 1)
    )
    axes.set_xlabel("trainable parameters (log; 0 shown at 1)")
    axes.set_ylabel(f"test {METRIC_TITLES.get(metric, metric)}")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, image.getvalue())
    return path
