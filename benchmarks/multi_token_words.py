"""Multi-token label words: one row per (example, word) vs one pass of the context (WordTree).

The per-word way is how a log-likelihood scorer usually ranks continuations
(lm-evaluation-harness' HF backend sends one (context, continuation) request
each, and so did softprompt before): every label word gets its own copy of the
context. softprompt now runs the context once with every label word after it
under a visibility mask (tasks/word_tree.py). Both are exact; this script checks
they give the same scores and times a training step (forward + backward to the
prompt) of each, interleaved (A B, B A, ...), on newsgroups20, whose 20 label
names are several tokens each, on SmolLM2-135M.

    python benchmarks/multi_token_words.py --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.tasks.base import continuation_batch, continuation_log_probs  # noqa: E402
from softprompt.train.sampler import micro_batch  # noqa: E402


def per_word_scores(model, examples) -> torch.Tensor:
    """The old way: rows context + word for every (example, word) -> (B, C) class scores."""
    task = model.task
    words = task.tree.words  # W token lists
    contexts = task.contexts(examples)
    repeated = [c for c in contexts for _ in words]
    batch = continuation_batch(repeated, words * len(contexts), task.pad_id)
    hidden = model.injector.hidden_states(
        model.prompt(), batch["input_ids"], batch["attention_mask"]
    )  # (B * W, T + k, d)
    word_scores = continuation_log_probs(hidden, batch, model.injector).sum(-1)  # (B * W,)
    return task._class_scores(word_scores.view(len(examples), len(words)))  # (B, C)


def tree_scores(model, examples) -> torch.Tensor:
    return model(model.collate(examples)).scores  # (B, C)


def step_seconds(score_fn, model, examples) -> float:
    targets = model.task.with_targets({}, examples)["targets"]
    tick = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(score_fn(model, examples), targets)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/multi_token_words.json")
    args = parser.parse_args()

    backbone = load_backbone("smollm2-135m")
    data = load_dataset("newsgroups20")
    model = build_model(backbone, data, {"name": "soft-prompt", "n_tokens": 20}, {})
    words = model.task.tree.words
    print(
        f"{len(words)} label words, {sum(map(len, words))} tokens, longest {max(map(len, words))}"
    )

    with torch.no_grad():
        probe = data.validation[:8]
        difference = (per_word_scores(model, probe) - tree_scores(model, probe)).abs().max().item()
    print(f"max |score difference| over {len(probe)} examples: {difference:.2e}")

    times = {"per-word": [], "word-tree": []}
    sides = [("per-word", per_word_scores), ("word-tree", tree_scores)]
    for step in range(args.steps):
        rows = micro_batch(data.train, args.batch_size, 0, step)
        for name, fn in sides if step % 2 == 0 else sides[::-1]:
            times[name].append(step_seconds(fn, model, rows))
        print(f"step {step + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))

    median = {k: statistics.median(v) for k, v in times.items()}
    ratio = median["per-word"] / median["word-tree"]
    print("\n| | per-word rows | word tree | per-word / tree |\n|---|---|---|---|")
    print(
        f"| median training step (batch {args.batch_size}) | {median['per-word']:.2f} s | "
        f"{median['word-tree']:.2f} s | **{ratio:.1f}x** |"
    )
    result = {
        "backbone": "smollm2-135m",
        "dataset": "newsgroups20",
        "batch_size": args.batch_size,
        "steps": args.steps,
        "label_words": len(words),
        "label_word_tokens": sum(map(len, words)),
        "max_abs_score_difference": difference,
        "median_step_seconds": median,
        "ratio_per_word_over_tree": ratio,
        "torch_threads": torch.get_num_threads(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
