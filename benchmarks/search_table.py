"""The honest-numbers table: hand-written prompts, every search method at one budget,
soft prompts from several inits (one from the best hard prompt), and their projections.

    python benchmarks/search_table.py --datasets movie-sentiment election-tweets \\
        --budget 24 --seeds 0 1 2 --examples 32 --test-examples 300 --soft-steps 60

Every search scores candidates on the same `--examples` validation rows; the best
prompt of each run (by validation) is scored on the same `--test-examples` test
rows as everything else. Search rows give mean and spread (min-max) over seeds.
Soft prompts train `--soft-steps` steps (batch 8, lr 3e-2) and are scored on the
same test rows; each is then projected to its nearest tokens (cosine and L2).
Writes Markdown to stdout and JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.evaluate import evaluate  # noqa: E402
from softprompt.presets import task_defaults  # noqa: E402
from softprompt.search import TaskSpec, search  # noqa: E402
from softprompt.search.bridge import (  # noqa: E402
    project,
    projected_candidate,
    save_search_prompt,
    soft_init_from_prompt,
)
from softprompt.search.run import sample  # noqa: E402
from softprompt.search.scorer import CandidateScorer  # noqa: E402
from softprompt.train import TrainConfig, train  # noqa: E402

MANUAL = {
    "movie-sentiment": [
        "Review: {text}\nSentiment:",
        "{text}\nWas this review positive or negative? Answer:",
        "Movie review: {text}\nThe critic's opinion of the film is",
    ],
    "election-tweets": [
        "Tweet: {text}\nThis tweet was written by",
        "{text}\nWho wrote this tweet, Hillary or Trump? Answer:",
        "The following tweet is from the 2016 US election campaign.\n{text}\nAuthor:",
    ],
}
METHODS = ["random-edit", "greedy-edit", "autoprompt", "rlprompt", "opro"]


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def dataset_rows(args, backbone, name: str) -> list[dict]:
    data = load_dataset(name)
    preset = task_defaults(name)
    validation = sample(data.validation, args.examples)
    test = sample(data.test, args.test_examples)
    base = dict(labels=list(data.labels), examples=validation, train=data.train)
    verbalizer = preset.get("verbalizer")

    def spec(template: str) -> TaskSpec:
        return TaskSpec(backbone, template=template, verbalizer=verbalizer, **base)

    val_scorer = CandidateScorer(backbone, spec(preset["template"]).verbalizer_ids, validation)
    test_scorer = CandidateScorer(backbone, val_scorer.verbalizer, test)
    rows = []

    def add(kind: str, prompt: str, val: list[float], tst: list[float], evals: str, secs: float):
        rows.append({"dataset": name, "kind": kind, "prompt": prompt, "validation": val,
                     "test": tst, "evaluations": evals, "seconds": round(secs, 1)})  # fmt: skip
        print(f"  {kind}: test {spread(tst)} ({secs:.0f} s)", flush=True)

    manual = [spec(t).candidate(t) for t in MANUAL[name]]
    val_scores = val_scorer.score(manual)
    test_scores = test_scorer.score(manual)
    add("zero-shot template", manual[0].template, [val_scores[0].accuracy],
        [test_scores[0].accuracy], "-", 0)  # fmt: skip
    best_manual = max(range(len(manual)), key=lambda i: val_scores[i].key)
    add("best of 3 manual prompts", manual[best_manual].template,
        [val_scores[best_manual].accuracy], [test_scores[best_manual].accuracy], "3", 0)  # fmt: skip
    best_hard = (val_scores[best_manual].key, manual[best_manual].template)
    for method in args.methods:
        found, val, tst, used, start = [], [], [], [], time.perf_counter()
        for seed in args.seeds:
            options = {"max_tokens": 32} if method == "opro" else {}
            result = search(spec(preset["template"]), method=method, budget=args.budget,
                            seed=seed, options=options)  # fmt: skip
            (test_score,) = test_scorer.score([result.best.candidate])
            found.append(result.best.template)
            val.append(result.best.score.accuracy)
            tst.append(test_score.accuracy)
            used.append(result.evaluations)
            best_hard = max(best_hard, (result.best.score.key, result.best.template))
        add(method, found[val.index(max(val))], val, tst, f"{max(used)}/{args.budget}",
            time.perf_counter() - start)  # fmt: skip
    if args.soft_steps:
        rows += soft_rows(args, backbone, data, name, best_hard[1], test, test_scorer, add)
    return rows


def soft_rows(args, backbone, data, name, hard_template, test, test_scorer, add) -> list:
    preset = task_defaults(name)
    with tempfile.TemporaryDirectory() as folder:
        hard_path = save_search_prompt(
            Path(folder) / "hard.safetensors",
            backbone,
            build_model(backbone, data, {"name": "none"}, preset).task.config,
            hard_template,
        )
        from_hard = soft_init_from_prompt(hard_path, backbone)
        inits = {
            "vocab": ({"name": "soft-prompt", "n_tokens": 20, "init": "vocab"}, preset),
            "labels": ({"name": "soft-prompt", "n_tokens": 20, "init": "labels"}, preset),
            "best hard prompt": from_hard,
        }
        for label, (method, task) in inits.items():
            start = time.perf_counter()
            model = build_model(backbone, data, method, task)
            config = TrainConfig(steps=args.soft_steps, batch_size=8, lr=3e-2,
                                 eval_every=args.soft_steps, eval_examples=args.examples)  # fmt: skip
            result = train(model, data, config, Path(folder) / label, progress=False)
            tuned = type(model).load(result.prompt_path, backbone)
            score = evaluate(tuned, test)["accuracy"]
            add(f"soft prompt, init {label}", f"{model.num_trainable():,} params", [], [score],
                f"{args.soft_steps} steps", time.perf_counter() - start)  # fmt: skip
            for metric in ("cosine", "l2"):
                projection = project(tuned, metric)
                (kept,) = test_scorer.score([projected_candidate(tuned, projection)])
                add(f"  projected ({metric})", repr("".join(projection.tokens)), [],
                    [kept.accuracy], "-", 0)  # fmt: skip
    return []


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=["movie-sentiment", "election-tweets"])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--budget", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--test-examples", type=int, default=300)
    parser.add_argument("--soft-steps", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared CPU)")
    parser.add_argument("--out", default="benchmarks/results/search_table.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = load_backbone(args.backbone)
    rows = []
    for name in args.datasets:
        print(name, flush=True)
        rows += dataset_rows(args, backbone, name)
    print("\n| dataset | prompt | how found | validation acc. | test acc. | evaluations |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        val = spread(r["validation"]) if r["validation"] else "-"
        print(f"| {r['dataset']} | `{r['prompt']!r}` | {r['kind']} | {val} | {spread(r['test'])} "
              f"| {r['evaluations']} |")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
