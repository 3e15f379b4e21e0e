"""Manual vs automatic label words in the k-shot regime, zero-shot and after a short
soft prompt.

Draws K rows per class (data seed `--seed`) from a built-in dataset's training split,
chooses label words on them (`task.verbalizer: auto`, tasks/auto_verbalizer.py), and
scores the built-in template with its manual words and with the chosen ones on
`--test-examples` test rows (the search table's seeded sample). With `--steps`, also a
soft prompt (20 tokens, lr 3e-2) trained on the K shots with each verbalizer, the best
step chosen on the K-per-class validation rows.

    OMP_NUM_THREADS=1 python benchmarks/fewshot_label_words.py --shots 16 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import Dataset, Example, load_dataset  # noqa: E402
from softprompt.data.shots import few_shot_dataset  # noqa: E402
from softprompt.evaluate import evaluate  # noqa: E402
from softprompt.model import build_model  # noqa: E402
from softprompt.search.run import sample  # noqa: E402
from softprompt.tasks.presets import task_defaults  # noqa: E402
from softprompt.train import TrainConfig, train  # noqa: E402


def _score(backbone, data, test, framing, verbalizer, steps: int) -> dict[str, float]:
    task = dict(framing) if verbalizer is None else {**framing, "verbalizer": verbalizer}
    zero = build_model(backbone, data, {"name": "none"}, task)
    row = {"zero-shot": evaluate(zero, test, batch_size=32)["accuracy"]}
    if steps:
        model = build_model(backbone, data, {"name": "soft-prompt", "n_tokens": 20}, task)
        config = TrainConfig(steps=steps, batch_size=8, lr=3e-2, seed=0, eval_every=max(1, steps // 4),
                             warmup_steps=min(10, steps // 4))  # fmt: skip
        with tempfile.TemporaryDirectory() as out:
            train(model, data, config, out, progress=False)
        row["soft prompt"] = evaluate(model, test, batch_size=32)["accuracy"]
    return {**row, "words": str(zero.task.config.verbalizer)}


def as_codes(data: Dataset) -> Dataset:
    """The dataset with labels renamed L0, L1, ... (and a new name, so no preset words)."""
    codes = {label: f"L{i}" for i, label in enumerate(data.labels)}

    def rows(split: list[Example]) -> list[Example]:
        return [Example(e.text, codes[e.label]) for e in split]

    return dataclasses.replace(
        data,
        name=f"{data.name}-codes",
        labels=[codes[label] for label in data.labels],
        train=rows(data.train),
        validation=rows(data.validation),
        test=rows(data.test),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="movie-sentiment")
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--words", type=int, default=1, help="label words per class (auto:N)")
    parser.add_argument("--test-examples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=0, help="0: zero-shot only")
    parser.add_argument(
        "--codes", action="store_true", help="rename the labels L0, L1, ... (label codes)"
    )
    args = parser.parse_args()
    if args.shots < 1 or args.test_examples < 1 or args.words < 1:
        parser.error("--shots, --test-examples and --words: expected positive integers")
    if args.steps < 0:
        parser.error(f"--steps: expected 0 or more, got {args.steps}")
    torch.set_num_threads(1)
    backbone = load_backbone(args.backbone)
    data = few_shot_dataset(load_dataset(args.dataset), args.shots, args.seed)
    framing = {"template": task_defaults(args.dataset).get("template", "{text}")}
    if args.codes:  # a user's file whose labels are codes: no built-in words apply
        data = as_codes(data)
    test = sample(data.test, args.test_examples)
    print(f"{data.name}, K={args.shots}, data seed {args.seed}, {len(test)} test rows")
    for name, verbalizer in (("manual", None), ("auto", f"auto:{args.words}")):
        print(name, _score(backbone, data, test, framing, verbalizer, args.steps), flush=True)


if __name__ == "__main__":
    main()
