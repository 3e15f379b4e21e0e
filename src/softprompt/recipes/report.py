"""The run report: one row per prompt or baseline, with its test scores, size and time;
for classification, each prompt's per-class table and confusion matrix (a macro-F1 alone
hides which class a prompt gets wrong, or that it says one class for every row); the
run's config and date, so a report read later says what produced it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.train import TrainResult

# Report columns, in order; a column appears when any row (any task) has that score.
METRIC_TITLES = {
    "entity_f1": "entity F1",
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "bleu": "BLEU",  # generation (tasks/text_metrics.py): 0-100, as papers quote it
    "rouge_l": "ROUGE-L",  # 0-100, like BLEU
    "exact_match": "exact match",  # 0-1, like accuracy
}
HUNDREDS = ("bleu", "rouge_l")  # scores on a 0-100 scale: two decimals are enough


def metric_cell(name: str, value: float) -> str:
    """A score as the table shows it: 0-100 scores with 2 decimals, 0-1 scores with 4."""
    return f"{value:.2f}" if name in HUNDREDS else f"{value:.4f}"


def class_report(labels: list[str], gold: list[str], predicted: list[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, and the confusion matrix (rows: gold,
    columns: predicted, both in `labels` order) from each row's gold and predicted label."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        matrix[index[g]][index[p]] += 1
    per_class = {}
    for i, label in enumerate(labels):
        tp, said, support = matrix[i][i], sum(r[i] for r in matrix), sum(matrix[i])
        precision = tp / said if said else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * tp / (said + support) if said + support else 0.0
        per_class[label] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
        }
    return {"labels": list(labels), "per_class": per_class, "confusion": matrix}


def collapsed_class(classes: dict[str, Any]) -> str | None:
    """The one label a prompt predicted for every row when the gold rows hold several
    classes (a collapse worth saying out loud); None otherwise."""
    matrix, labels = classes["confusion"], classes["labels"]
    said = [j for j in range(len(labels)) if any(row[j] for row in matrix)]
    gold = [i for i in range(len(labels)) if any(matrix[i])]
    return labels[said[0]] if len(said) == 1 and len(gold) > 1 else None


def collapse_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """One line per trained row whose predictions collapsed to one class (zero-shot rows
    are not warned about: no training to tune, and the table shows their score)."""
    lines = []
    several = len({r.get("task") for r in rows}) > 1  # one task: its name is the data path
    for r in rows:
        trained = not str(r.get("name", "")).startswith("zero-shot")
        label = collapsed_class(r["classes"]) if "classes" in r and trained else None
        if label is not None:
            task = f"{r['task']}: " if several and r.get("task") else ""
            lines.append(
                f"warning: {task}{r['name']} predicts {label!r} for every test row "
                "(collapsed to one class); try a lower learning rate or more steps"
            )
    return lines


@dataclass
class RunReport:
    rows: list[dict[str, Any]]
    result: TrainResult
    out_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    date: str = ""
    notes: list[str] = field(default_factory=list)

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
        table = head + "\n".join(lines) + f"\n\ntest split: {sizes}\n"
        return table + "".join(f"\n{n}\n" for n in self.notes + collapse_warnings(self.rows))

    def details(self) -> str:
        """What follows the table in report.md: each classification row's per-class table
        and confusion matrix, then the run's date and config."""
        several = len({r.get("task") for r in self.rows}) > 1
        parts = [_class_section(r, several) for r in self.rows if "classes" in r]
        if self.date:
            parts.append(f"## Run\n\ndate: {self.date}\n")
        if self.config:
            body = json.dumps(self.config, indent=2)
            parts.append(f"## Config\n\n```json\n{body}\n```\n")
        return "".join(f"\n{p}" for p in parts)


def _class_section(r: dict[str, Any], several: bool) -> str:
    classes = r["classes"]
    title = f"{r['task']}: {r['name']}" if several and r.get("task") else r["name"]
    lines = [
        f"## {title}\n",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for label, c in classes["per_class"].items():
        lines.append(
            f"| {label} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
        )
    labels = classes["labels"]
    lines += ["", "confusion matrix (rows: gold, columns: predicted)", ""]
    lines.append("| gold \\ predicted | " + " | ".join(labels) + " |")
    lines.append("|---" * (len(labels) + 1) + "|")
    for label, row in zip(labels, classes["confusion"], strict=True):
        lines.append(f"| {label} | " + " | ".join(str(n) for n in row) + " |")
    return "\n".join(lines) + "\n"


def _metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    present = [name for name in METRIC_TITLES if any(name in r for r in rows)]
    unscored = any(not any(name in r for name in present) for r in rows)  # undecoded generation
    return present + ["loss"] * unscored


def _score_cells(r: dict[str, Any], columns: list[str]) -> str:
    size, seconds = f"{r['file_bytes'] / 1024:.1f} KiB", f"{r['train_seconds']:.0f} s"
    scores = " | ".join(metric_cell(c, r[c]) if c in r else "-" for c in columns)
    return f"| {r['name']} | {scores} | {r['trainable_parameters']:,} | {size} | {seconds} |"
