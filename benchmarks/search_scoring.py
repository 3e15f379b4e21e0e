"""Candidate evaluations per second: the batched search scorer against one at a time.

Search is dominated by scoring candidate prompts on a batch of labelled
examples. Two ways, interleaved (A B, A B, ...) in one process on the same
frozen SmolLM2-135M, the same examples and the same candidates:

  A  one at a time through softprompt's own path: `build_model(..., {"name": "none"},
     {"template": t})` + `evaluate` per candidate (what a user would write);
  B  the search scorer with all candidates in one call (shared K/V, examples in
     length-sorted groups).

Four candidate families: AutoPrompt/RLPrompt-style trigger tokens between the
text and the answer cue (only the tail differs: the text runs once), OPRO-style
instructions in front of the template (each instruction runs once), the same
instructions after the text (OPRO's `position: end`, the paper's Q_end: the
text runs once again), and the front instructions followed by four labelled
training examples (a few-shot prompt in front, as prompts drafted from a corpus
sample are).
Prints evaluations per second and the ratios, and checks the two agree.

It also counts the tokens each side feeds through the transformer (padding
included, a forward pre-hook on the backbone's core): with instructions in
front, every example's text and the answer cue must run once per candidate
(their keys/values depend on the instruction before them), so the ratio of
token counts is about the most any exact batching can gain there.

    python benchmarks/search_scoring.py --examples 32 --candidates 8 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.evaluate import evaluate  # noqa: E402
from softprompt.search.scorer import Candidate, CandidateScorer, Verbalizer  # noqa: E402
from softprompt.search.vocab import word_strings  # noqa: E402
from softprompt.tasks.presets import task_defaults  # noqa: E402

INSTRUCTIONS = [
    "Classify the sentiment of the movie review below as positive or negative.",
    "Read the review and decide whether the critic liked the film.",
    "Is this movie review positive or negative? Answer with one word.",
    "You are a film critic. Judge the tone of the following review.",
]


def candidates(kind: str, template: str, words: list[str], count: int, rng: random.Random, data):
    if kind == "triggers":  # 4 trigger words between the text and the answer cue
        head, tail = template.split("{text}")
        return [head + "{text} " + " ".join(rng.sample(words, 4)) + tail for _ in range(count)]
    out = [  # an instruction (plus a random word, so all differ) in front of the template
        f"{INSTRUCTIONS[i % len(INSTRUCTIONS)]} {rng.choice(words).capitalize()}.\n{template}"
        for i in range(count)
    ]
    if kind == "instructions":
        return out
    if kind == "instructions-after":  # the same instructions after the text (OPRO Q_end)
        head, tail = template.split("{text}")
        return [head + "{text}\n" + t[: -len(template) - 1] + tail for t in out]
    # "demonstrations": the instruction, then 4 labelled training rows, then the template
    shots = lambda: "".join(  # noqa: E731
        template.replace("{text}", e.text.replace("{", "(").replace("}", ")")) + f" {e.label}\n\n"
        for e in rng.sample(data.train, 4)
    )
    return [t.replace(template, shots() + template) for t in out]


class TokenCounter:
    """Tokens (padding included) fed through a module, via a forward pre-hook."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.tokens = 0
        module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs) -> None:
        x = kwargs.get("inputs_embeds")
        x = kwargs.get("input_ids") if x is None else x
        x = args[0] if x is None and args else x
        self.tokens += x.shape[0] * x.shape[1]


def one_by_one_api(backbone, data, task, templates, examples):
    out = []
    for t in templates:
        model = build_model(backbone, data, {"name": "none"}, {**task, "template": t})
        r = evaluate(model, examples, batch_size=len(examples))
        out.append((r["accuracy"], r["loss"]))
    return out


def scorer_calls(scorer, cands):
    return [(s.accuracy, s.loss) for s in scorer.score(cands)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--dataset", default="movie-sentiment")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=["triggers", "instructions", "instructions-after", "demonstrations"],
    )
    parser.add_argument("--out", default="benchmarks/results/search_scoring.json")
    args = parser.parse_args()
    # one thread each side: on a CPU shared with other jobs, two threads spend their
    # time waiting for each other at every op's barrier, which swamps the arithmetic
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = load_backbone(args.backbone)
    data = load_dataset(args.dataset)
    task = task_defaults(args.dataset)
    examples = data.validation[: args.examples]
    verbalizer = Verbalizer.build(list(data.labels), task.get("verbalizer"), backbone.tokenizer)
    scorer = CandidateScorer(backbone, verbalizer, examples)
    words = word_strings(backbone, 500)
    counter = TokenCounter(backbone.core())
    results = {}
    for kind in args.kinds:
        templates = candidates(
            kind, task["template"], words, args.candidates, random.Random(0), data
        )
        cands = [Candidate.from_template(t, backbone.tokenizer) for t in templates]
        times = {"api": [], "batched": []}
        cpu = {"api": [], "batched": []}  # process CPU seconds: steadier on a shared CPU
        tokens = {"api": 0, "batched": 0}
        answers = {}
        for _ in range(args.reps):
            for name, fn in (
                ("api", lambda t=templates: one_by_one_api(backbone, data, task, t, examples)),
                ("batched", lambda c=cands: scorer_calls(scorer, c)),
            ):
                start, used, before = time.perf_counter(), time.process_time(), counter.tokens
                answers[name] = fn()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - used)
                tokens[name] = counter.tokens - before  # the same every repetition
        gap = max(abs(a[1] - b[1]) for a, b in zip(answers["api"], answers["batched"], strict=True))
        same_acc = all(
            a[0] == b[0] for a, b in zip(answers["api"], answers["batched"], strict=True)
        )
        rate = {k: args.candidates / statistics.median(v) for k, v in times.items()}
        cpu_rate = {k: args.candidates / statistics.median(v) for k, v in cpu.items()}
        results[kind] = {
            "evals_per_s": rate,
            "batched_over_api": rate["batched"] / rate["api"],
            "evals_per_cpu_s": cpu_rate,
            "batched_over_api_cpu": cpu_rate["batched"] / cpu_rate["api"],
            "tokens_through_model": tokens,
            "token_ratio": tokens["api"] / tokens["batched"],
            "max_loss_gap": gap,
            "same_accuracy": same_acc,
            "seconds": times,
            "cpu_seconds": cpu,
        }
        print(
            f"{kind:12s} evals/s  one at a time {rate['api']:.3f}  batched {rate['batched']:.3f}"
            f"  ->  {rate['batched'] / rate['api']:.1f}x wall, "
            f"{cpu_rate['batched'] / cpu_rate['api']:.1f}x CPU time (tokens through the model "
            f"{tokens['api']} vs {tokens['batched']}: {tokens['api'] / tokens['batched']:.1f}x); "
            f"max loss gap {gap:.1e}, "
            f"same accuracies {same_acc}",
            flush=True,
        )
        write(args, results)


def write(args, results: dict) -> None:
    """Rewritten after each family, so a cut run keeps the families it finished; families
    measured by an earlier run with the same settings are kept (`--kinds` runs a few)."""
    meta = {
        "backbone": args.backbone,
        "dataset": args.dataset,
        "examples": args.examples,
        "candidates": args.candidates,
        "reps": args.reps,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.is_file() else {}
    same = {k: v for k, v in meta.items() if k != "date"}
    if {k: old.get("meta", {}).get(k) for k in same} == same:  # families run separately
        results = {**old.get("results", {}), **results}
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
