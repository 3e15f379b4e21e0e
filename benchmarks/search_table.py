"""The honest-numbers table: hand-written prompts, every search method at one budget,
soft prompts from every init (one from the best hard prompt), and their projections.

    python benchmarks/search_table.py --datasets movie-sentiment election-tweets \\
        --budget 6 --seeds 0 1 2 --examples 16 --test-examples 100 --soft-steps 20

Every search scores candidates on the same `--examples` validation rows; the best
prompt of each run (by validation) is scored on the same `--test-examples` test
rows as everything else. Search rows give mean and spread (min-max) over seeds.
Soft prompts (20 virtual tokens; the hard-prompt init takes as many as its words)
train `--soft-steps` steps (batch `--soft-batch`, lr 3e-2 after a warm-up of a
quarter of the steps up to 10, seed 0) and are scored on the same
test rows; each is then projected to its nearest tokens (cosine and L2).

The run is cut into units (the manual prompts, one search at one seed, one soft
prompt with its projections), and the JSON at --out is rewritten after each, so a
run cut by a timeout keeps what it finished; run the same command again to go on
from there (`--render` prints the table of whatever is in the file). Units run
in this order: manual prompts, every search at the first seed, the soft prompts
(the best hard prompt is the best by validation among the rows done by then),
then the other seeds. `--only search` / `--only soft` split the units over two
processes with two --out files; `--also FILE` reads the other's units (for the
best hard prompt, and to render one table).
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
from softprompt.files import atomic_write_text  # noqa: E402
from softprompt.search import TaskSpec, search  # noqa: E402
from softprompt.search.bridge import (  # noqa: E402
    project,
    projected_candidate,
    save_search_prompt,
    soft_init_from_prompt,
)
from softprompt.search.run import sample  # noqa: E402
from softprompt.search.scorer import CandidateScorer  # noqa: E402
from softprompt.tasks.presets import task_defaults  # noqa: E402
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
# `init: text` starts from a plain task description (not one of the manual prompts)
INIT_TEXT = {
    "movie-sentiment": "Decide whether this movie review is positive or negative.",
    "election-tweets": "Decide whether Hillary Clinton or Donald Trump wrote this tweet.",
}
METHODS = ["random-edit", "greedy-edit", "autoprompt", "rlprompt", "opro"]
INITS = ["random", "vocab", "text", "labels", "best hard prompt"]
# what must match for a results file to be resumed
SAME_RUN = ("backbone", "budget", "examples", "test_examples")


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


class Context:
    """One dataset's rows, scorers and task spec (built once, on first use)."""

    def __init__(self, args, backbone, name: str) -> None:
        self.name, self.backbone, self.args = name, backbone, args
        self.data = load_dataset(name)
        self.preset = task_defaults(name)
        self.validation = sample(self.data.validation, args.examples)
        self.test = sample(self.data.test, args.test_examples)
        self.val_scorer = CandidateScorer(
            backbone, self.spec(self.preset["template"]).verbalizer_ids, self.validation
        )
        self.test_scorer = CandidateScorer(backbone, self.val_scorer.verbalizer, self.test)

    def spec(self, template: str) -> TaskSpec:
        return TaskSpec(self.backbone, labels=list(self.data.labels), template=template,
                        examples=self.validation, train=self.data.train,
                        verbalizer=self.preset.get("verbalizer"))  # fmt: skip


def manual_unit(ctx: Context) -> dict:
    """The three hand-written prompts scored on validation and test (3 evaluations)."""
    manual = [ctx.spec(t).candidate(t) for t in MANUAL[ctx.name]]
    val = ctx.val_scorer.score(manual)
    tst = ctx.test_scorer.score(manual)
    return {"prompts": [
        {"template": c.template, "validation": v.accuracy, "validation_loss": v.loss,
         "test": t.accuracy} for c, v, t in zip(manual, val, tst, strict=True)
    ]}  # fmt: skip


def search_unit(ctx: Context, method: str, seed: int) -> dict:
    """One search at one seed; its best (by validation) scored on the test rows."""
    options = {"max_tokens": 32} if method == "opro" else {}
    result = search(ctx.spec(ctx.preset["template"]), method=method, budget=ctx.args.budget,
                    seed=seed, options=options)  # fmt: skip
    (test,) = ctx.test_scorer.score([result.best.candidate])
    return {"template": result.best.template, "validation": result.best.score.accuracy,
            "validation_loss": result.best.score.loss, "test": test.accuracy,
            "evaluations": result.evaluations, "lm_calls": result.lm_calls}  # fmt: skip


def best_hard(done: dict, name: str) -> tuple[str, float, int]:
    """The best template by validation (accuracy, then loss) among the rows done so far
    (and how many searches were done by then)."""
    searches = [r for k, r in done.items() if k.startswith(f"{name}|search|")]
    found = list(done[f"{name}|manual"]["prompts"]) + searches
    best = max(found, key=lambda r: (r["validation"], -r["validation_loss"]))
    return best["template"], best["validation"], len(searches)


def soft_unit(ctx: Context, init: str, done: dict) -> dict:
    """Train a 20-token soft prompt from `init`, score it, project it both ways."""
    method = {"name": "soft-prompt", "n_tokens": 20, "init": init}
    task, extra = ctx.preset, {}
    with tempfile.TemporaryDirectory() as folder:
        if init == "text":
            method["init_text"] = INIT_TEXT[ctx.name]
        if init == "best hard prompt":
            template, val, searches = best_hard(with_also(done, ctx.args), ctx.name)
            config = build_model(ctx.backbone, ctx.data, {"name": "none"}, task).task.config
            path = save_search_prompt(Path(folder) / "hard.safetensors", ctx.backbone, config,
                                      template)  # fmt: skip
            method, task = soft_init_from_prompt(path, ctx.backbone)
            extra = {"hard_template": template, "hard_validation": val, "searches_done": searches}
        model = build_model(ctx.backbone, ctx.data, method, task)
        steps = ctx.args.soft_steps
        config = TrainConfig(steps=steps, batch_size=ctx.args.soft_batch, lr=3e-2, seed=0,
                             warmup_steps=min(10, steps // 4), eval_every=steps,
                             eval_examples=ctx.args.examples)  # fmt: skip
        result = train(model, ctx.data, config, Path(folder) / "run", progress=False)
        tuned = type(model).load(result.prompt_path, ctx.backbone)
        score = evaluate(tuned, ctx.test)["accuracy"]
        projections, scored = {}, {}
        for metric in ("cosine", "l2"):
            projection = project(tuned, metric)
            ids = tuple(projection.ids)  # both metrics often pick the same tokens: score once
            if ids not in scored:
                (scored[ids],) = ctx.test_scorer.score([projected_candidate(tuned, projection)])
            kept = scored[ids]
            projections[metric] = {"tokens": "".join(projection.tokens), "test": kept.accuracy,
                                   "ids": list(ids),
                                   "mean_cosine": statistics.mean(projection.similarity)}  # fmt: skip
    return {"params": model.num_trainable(), "test": score, "steps": steps,
            "batch": ctx.args.soft_batch,
            "template": task["template"], "projections": projections, **extra}  # fmt: skip


def units(args) -> list[tuple]:
    """Every unit in run order: manual, first seed, soft prompts, the other seeds."""
    out = [(d, "manual") for d in args.datasets]
    first, *rest = args.seeds
    out += [(d, "search", m, first) for d in args.datasets for m in args.methods]
    if args.soft_steps:
        out += [(d, "soft", i) for i in args.inits for d in args.datasets]
    out += [(d, "search", m, s) for s in rest for d in args.datasets for m in args.methods]
    if args.only != "all":  # one kind of unit (the other run in another process)
        keep = {"search": ("manual", "search"), "soft": ("soft",)}[args.only]
        out = [u for u in out if u[1] in keep]
    return out


def with_also(done: dict, args) -> dict:
    """`done` plus the units of the --also files (read fresh: another run may be adding)."""
    merged = {}
    for extra in args.also:
        if Path(extra).is_file():
            merged.update(json.loads(Path(extra).read_text()).get("units", {}))
    return {**merged, **done}


def load_done(args) -> dict:
    path = Path(args.out)
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    old = saved.get("args", {})
    if any(old.get(k) != vars(args)[k] for k in SAME_RUN):
        raise SystemExit(f"{path}: made with other settings ({', '.join(SAME_RUN)}); "
                         "pass another --out or delete it")  # fmt: skip
    return saved.get("units", {})


def table(done: dict, args) -> str:
    lines = ["| dataset | how found | prompt | validation acc. | test acc. | evaluations |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for d in args.datasets:
        manual = done.get(f"{d}|manual")
        if manual:
            zero, *_ = manual["prompts"]
            best = max(manual["prompts"], key=lambda r: (r["validation"], -r["validation_loss"]))
            lines.append(f"| {d} | zero-shot template | `{zero['template']!r}` "
                         f"| {zero['validation']:.3f} | {zero['test']:.3f} | 1 |")  # fmt: skip
            lines.append(f"| {d} | best of 3 manual prompts | `{best['template']!r}` "
                         f"| {best['validation']:.3f} | {best['test']:.3f} | 3 |")  # fmt: skip
        for m in args.methods:
            runs = [done[k] for s in args.seeds if (k := f"{d}|search|{m}|{s}") in done]
            if not runs:
                continue
            top = max(runs, key=lambda r: (r["validation"], -r["validation_loss"]))
            lines.append(
                f"| {d} | {m} ({len(runs)} seed{'s' * (len(runs) > 1)}) | `{top['template']!r}` "
                f"| {spread([r['validation'] for r in runs])} | {spread([r['test'] for r in runs])} "
                f"| {max(r['evaluations'] for r in runs)}/{args.budget} |"
            )
        for i in args.inits:
            r = done.get(f"{d}|soft|{i}")
            if not r:
                continue
            lines.append(f"| {d} | soft prompt, init {i} | {r['params']:,} params | - "
                         f"| {r['test']:.3f} "
                         f"| {r['steps']} steps x {r['batch']} rows |")  # fmt: skip
            for metric, p in r["projections"].items():
                keep = p["test"] / r["test"] if r["test"] else 0.0
                lines.append(f"| {d} | ... projected ({metric}) | `{p['tokens']!r}` | - "
                             f"| {p['test']:.3f} ({keep:.0%} of soft) | - |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=["movie-sentiment", "election-tweets"])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--inits", nargs="+", default=INITS)
    parser.add_argument("--budget", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--test-examples", type=int, default=100)
    parser.add_argument("--soft-steps", type=int, default=20)
    parser.add_argument("--soft-batch", type=int, default=8)
    parser.add_argument("--only", choices=["all", "search", "soft"], default="all")
    parser.add_argument("--also", nargs="*", default=[], help="other results files to read")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared CPU)")
    parser.add_argument("--render", action="store_true", help="print the table of --out only")
    parser.add_argument("--out", default="benchmarks/results/search_table.json")
    args = parser.parse_args()
    done = load_done(args)
    if args.render:
        print(table(with_also(done, args), args))
        return
    torch.set_num_threads(args.threads)
    backbone = load_backbone(args.backbone)
    contexts: dict[str, Context] = {}
    for unit in units(args):
        key = "|".join(map(str, unit))
        if key in done:
            continue
        name, kind, *rest = unit
        if name not in contexts:
            contexts[name] = Context(args, backbone, name)
        ctx, start = contexts[name], time.perf_counter()
        if kind == "manual":
            row = manual_unit(ctx)
        elif kind == "search":
            row = search_unit(ctx, *rest)
        else:
            row = soft_unit(ctx, rest[0], done)
        row["seconds"] = round(time.perf_counter() - start, 1)
        done[key] = row
        atomic_write_text(Path(args.out), json.dumps({"args": vars(args), "units": done}, indent=2))
        print(f"{key}: {row.get('test', '')} ({row['seconds']:.0f} s)", flush=True)
    print(table(with_also(done, args), args))


if __name__ == "__main__":
    main()
