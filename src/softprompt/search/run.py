"""What `softprompt search` does: search, score the best on the test split, save prompt files.

Also the soft -> hard report (`--project`): a learned prompt's vectors projected
to their nearest tokens, and how much of its accuracy the tokens keep.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from softprompt.backbones import Backbone
from softprompt.data import Dataset, Example, load_dataset
from softprompt.errors import ConfigError
from softprompt.evaluate import evaluate
from softprompt.files import atomic_write_text
from softprompt.model import load_prompt
from softprompt.search import SearchResult, TaskSpec, search
from softprompt.search.bridge import (
    project,
    projected_candidate,
    save_search_prompt,
    soft_vectors,
)
from softprompt.search.scorer import CandidateScorer, Score, Verbalizer
from softprompt.tasks import TaskConfig


def sample(rows: list[Example], count: int, seed: int = 0) -> list[Example]:
    """`count` rows (all when 0), drawn with a fixed seed so every run scores the same rows."""
    if count <= 0 or count >= len(rows):
        return list(rows)
    return random.Random(seed).sample(rows, count)


@dataclass
class SearchRun:
    result: SearchResult
    rows: list[dict[str, Any]]
    files: list[Path]

    def markdown(self) -> str:
        head = "| # | prompt | validation accuracy | test accuracy | evaluations used |\n"
        head += "|---|---|---|---|---|\n"
        lines = [
            f"| {r['rank']} | `{r['template']!r}` | {r['validation_accuracy']:.4f} "
            f"| {r['test_accuracy']:.4f} | {r['evaluations']} |"
            for r in self.rows
        ]
        tail = (
            f"\n\nmethod {self.result.method}, seed {self.result.seed}: "
            f"{self.result.evaluations}/{self.result.budget} evaluations, "
            f"{self.result.lm_calls} LM calls; validation rows {self.rows[0]['validation_rows']}, "
            f"test rows {self.rows[0]['test_rows']}\n"
        )
        return head + "\n".join(lines) + tail


def run_search(
    backbone: Backbone,
    data: Dataset,
    task: TaskConfig,
    *,
    method: str,
    budget: int,
    seed: int,
    examples: int,
    test_examples: int,
    top: int,
    options: dict[str, Any],
    out: Path,
    progress: bool = True,
) -> SearchRun:
    """Search on `examples` validation rows, score the best `top` on the test split."""
    if task.chat_template:  # the scorer frames bare text: a chat task would be scored wrong
        raise ConfigError(
            "search: a chat-template task (task.chat_template) is not searched yet: the "
            "candidates are scored on the bare template; drop --chat-template to search"
        )
    spec = TaskSpec(
        backbone=backbone,
        labels=list(task.labels),
        template=task.template,
        examples=sample(data.validation, examples),
        verbalizer=task.verbalizer,
        train=data.train,
        max_text_tokens=task.max_text_tokens,
    )
    bar = tqdm(total=budget, desc=f"search {method}", disable=not progress, unit="eval")

    def advance(used: int) -> None:
        bar.update(used - bar.n)

    result = search(
        spec, method=method, budget=budget, seed=seed, options=options, progress=advance
    )
    bar.close()
    best = result.ranked[:top]
    tests = test_scores(backbone, spec.verbalizer_ids, data, best, test_examples, task)
    rows, files = [], []
    out.mkdir(parents=True, exist_ok=True)
    for rank, (ranked, test) in enumerate(zip(best, tests, strict=True), start=1):
        row = {
            "rank": rank,
            "template": ranked.template,
            "validation_accuracy": ranked.score.accuracy,
            "validation_loss": ranked.score.loss,
            "validation_rows": ranked.score.examples,
            "test_accuracy": test.accuracy,
            "test_loss": test.loss,
            "test_rows": test.examples,
            "evaluations": result.evaluations,
            "found_at_evaluation": ranked.evaluation,
        }
        record = {"method": method, "seed": seed, "budget": budget, **row}
        path = out / f"{method}-seed{seed}-{rank}.safetensors"
        save_search_prompt(path, backbone, task, ranked.template, dataset=data.name, search=record)
        rows.append(row)
        files.append(path)
    summary = {"method": method, "seed": seed, "budget": budget, "rows": rows}
    summary["seed_template"] = {"template": spec.template, **vars(result.seed_score)}
    atomic_write_text(out / f"{method}-seed{seed}.json", json.dumps(summary, indent=2))
    return SearchRun(result=result, rows=rows, files=files)


def test_scores(
    backbone: Backbone,
    verbalizer: Verbalizer,
    data: Dataset,
    ranked: list,
    count: int,
    task: TaskConfig,
) -> list[Score]:
    """The scorer on the test split (same numbers as `softprompt eval`, in one batched call)."""
    scorer = CandidateScorer(
        backbone, verbalizer, sample(data.test, count), max_text_tokens=task.max_text_tokens
    )
    return scorer.score([r.candidate for r in ranked])


def run_projection(
    path: str | Path,
    backbone: Backbone | str | None,
    data: Dataset,
    *,
    metrics: list[str],
    examples: int,
    out: Path | None,
) -> str:
    """Markdown: the soft prompt's accuracy, each projection's tokens and accuracy.
    `backbone`: loaded, a name or folder (as --backbone gives it), or None for the file's."""
    model = load_prompt(path, backbone)
    rows = sample(data.test, examples)
    soft = evaluate(model, rows)
    config = model.task.config
    if config.kind != "classification" or model.task.label_token_ids() == []:
        raise ConfigError(f"{path}: projection is scored with label words (a verbalizer task)")
    verbalizer = Verbalizer.build(list(config.labels), config.verbalizer, model.backbone.tokenizer)
    scorer = CandidateScorer(
        model.backbone, verbalizer, rows, max_text_tokens=config.max_text_tokens
    )
    lines = [
        "| prompt | tokens | mean cosine to token | test accuracy | kept |",
        "|---|---|---|---|---|",
        f"| soft ({model.method_name}) | {soft_vectors(model).shape[0]} vectors | - | "
        f"{soft['accuracy']:.4f} | 100% |",
    ]
    for metric in metrics:
        projection = project(model, metric)
        candidate = projected_candidate(model, projection)
        (score,) = scorer.score([candidate])
        cosine = sum(projection.similarity) / len(projection.similarity)
        kept = score.accuracy / soft["accuracy"] if soft["accuracy"] else 0.0
        lines.append(
            f"| projected ({metric}) | `{projection.tokens!r}` | {cosine:.3f} | "
            f"{score.accuracy:.4f} | {100 * kept:.0f}% |"
        )
        if out is not None:
            save_search_prompt(
                Path(out) / f"projected-{metric}.safetensors",
                model.backbone,
                config,
                candidate.template,
                dataset=data.name,
                projection={"from": str(path), "metric": metric, "ids": projection.ids},
            )
    return "\n".join(lines) + f"\n\ntest rows {len(rows)}\n"


def load_search_data(source: str, text_column: str | None, label_column: str | None) -> Dataset:
    columns = {"text_column": text_column, "label_column": label_column}
    return load_dataset(source, **{k: v for k, v in columns.items() if v})
