"""What P-tuning's virtual tokens cost after `{text}` on a causal decoder.

Everything before `{text}` never sees the input, so it is computed once per step as a
shared prefix (one row, not B). Slots after `{text}` sit between each row's tokens and
must run in every row. Three templates with the same 6 virtual tokens from one MLP
prompt encoder, on SmolLM2-135M, movie-sentiment batches of 8, interleaved step by step
(the order rotates every step):

  front   "{p:6} Review: {text}\\nSentiment:"       all six in the shared prefix
  split   "{p:4} Review: {text} {p:2}\\nSentiment:"  two in every row
  tail    "Review: {text} {p:6}\\nSentiment:"       six in every row

Prints median forward + backward seconds per step and the ratios to `front`.

    OMP_NUM_THREADS=1 python benchmarks/ptuning_slots.py --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.tasks.presets import task_defaults  # noqa: E402

TEMPLATES = {
    "front": "{p:6} Review: {text}\nSentiment:",
    "split": "{p:4} Review: {text} {p:2}\nSentiment:",
    "tail": "Review: {text} {p:6}\nSentiment:",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/ptuning_slots.json")
    args = parser.parse_args()
    backbone = load_backbone("smollm2-135m")
    data = load_dataset("movie-sentiment")
    framing = task_defaults("movie-sentiment")
    method = {"name": "p-tuning", "n_tokens": 6, "encoder": "mlp"}
    models = {
        name: build_model(backbone, data, method, {**framing, "template": template})
        for name, template in TEMPLATES.items()
    }
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for step in range(args.steps + 1):  # step 0 warms up and is dropped
        rows = data.train[step * 8 : (step + 1) * 8]
        for name in names[step % 3 :] + names[: step % 3]:
            model = models[name]
            batch = model.collate(rows)
            tick = time.perf_counter()
            model(batch).loss.backward()
            if step:
                times[name].append(time.perf_counter() - tick)
            model.zero_grad(set_to_none=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios = {name: medians[name] / medians["front"] for name in medians}
    for name in names:
        print(f"{name:6s} {medians[name]:.3f} s/step  {ratios[name]:.3f}x front")
    record = {"steps": args.steps, "templates": TEMPLATES, "median_seconds": medians,
              "ratio_to_front": ratios}  # fmt: skip
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
