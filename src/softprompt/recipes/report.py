"""The run report: one row per prompt or baseline, with its test scores, size and time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.train import TrainResult

# Report columns, in order; a column appears when any row (any task) has that score.
METRIC_TITLES = {"entity_f1": "entity F1", "accuracy": "accuracy", "macro_f1": "macro-F1"}


@dataclass
class RunReport:
    rows: list[dict[str, Any]]
    result: TrainResult
    out_dir: Path

    def markdown(self) -> str:
        several = len({r.get("task") for r in self.rows}) > 1
        columns = _metric_columns(self.rows)
        task_head = "| task " if several else ""
        titles = "".join(f"| test {METRIC_TITLES.get(c, c)} " for c in columns)
        rules = "|---" * (len(columns) + 4 + several)
        head = (
            f"{task_head}| prompt {titles}| trainable params | file size | train time |\n{rules}|\n"
        )
        lines = [
            (f"| {r['task']} " if several else "") + _score_cells(r, columns) for r in self.rows
        ]
        tested = {r.get("task"): r["examples"] for r in self.rows}
        sizes = ", ".join(f"{n:,} {'row' if n == 1 else 'rows'}" for n in tested.values())
        return head + "\n".join(lines) + f"\n\ntest split: {sizes}\n"


def _metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    present = [name for name in METRIC_TITLES if any(name in r for r in rows)]
    unscored = any(not any(name in r for name in present) for r in rows)  # generation rows
    return present + ["loss"] * unscored


def _score_cells(r: dict[str, Any], columns: list[str]) -> str:
    size, seconds = f"{r['file_bytes'] / 1024:.1f} KiB", f"{r['train_seconds']:.0f} s"
    scores = " | ".join(f"{r[c]:.4f}" if c in r else "-" for c in columns)
    return f"| {r['name']} | {scores} | {r['trainable_parameters']:,} | {size} | {seconds} |"
