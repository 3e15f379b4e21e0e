"""Many prompts in one batch: a training step when the rows use different prompts.

On SmolLM2-135M with movie-sentiment batches of 8 rows, interleaved step by step
(the order rotates every step, so machine drift hits every variant alike):

  one    8 rows, one 20-token soft prompt (the shared-prefix fast path)
  two    the same 8 rows over 2 distinct 20-token soft prompts (4 rows each)
  eight  the same 8 rows over 8 distinct prompts: soft prompts of 10/14/18/22 tokens
         and prefix-tuning prefixes (MLP-reparameterized) of 6/8/10/12 tokens
  peft   PEFT's PromptTuningConfig step on the same rows with one 20-token prompt
         (as its docs train a causal LM: label word appended, full-vocabulary loss)

Each variant is a forward + backward to its prompts. Prints medians and the ratios the
per-row contract is held to: two/one <= 1.15, eight/peft <= 1.0.

    python benchmarks/per_row_prompts.py --steps 12
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

from peft import PromptTuningConfig, TaskType, get_peft_model  # noqa: E402
from peft_prompt_tuning import peft_batch  # noqa: E402  (this folder, run as a script)

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.model import MultiTaskModel  # noqa: E402
from softprompt.train.sampler import micro_batch  # noqa: E402

BATCH = 8


def soft(n: int, seed: int) -> dict:
    return {"name": "soft-prompt", "n_tokens": n, "init": "vocab", "seed": seed}


def prefix(n: int, seed: int) -> dict:
    return {"name": "prefix-tuning", "n_tokens": n, "seed": seed}


def variants(backbone, data) -> dict[str, MultiTaskModel]:
    build = lambda method: build_model(backbone, data, method, {})  # noqa: E731
    eight = {f"soft{i}": build(soft(10 + 4 * i, i)) for i in range(4)}
    eight |= {f"prefix{i}": build(prefix(6 + 2 * i, i)) for i in range(4)}
    return {
        "one": MultiTaskModel({"a": build(soft(20, 0))}),
        "two": MultiTaskModel({"a": build(soft(20, 0)), "b": build(soft(20, 1))}),
        "eight": MultiTaskModel(eight),
    }


def peft_step(peft_model, ours, examples) -> None:
    """PEFT's step as benchmarks/peft_prompt_tuning.py drives it (label word appended)."""
    peft_model(**peft_batch(ours, examples)).loss.backward()
    peft_model.zero_grad(set_to_none=True)


def ours_step(model: MultiTaskModel, examples) -> None:
    names = model.names
    items = [(names[i % len(names)], e) for i, e in enumerate(examples)]
    model(model.collate(items)).loss.backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/results/per_row_prompts.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone("smollm2-135m")
    data = load_dataset("movie-sentiment")
    models = variants(backbone, data)
    reference = models["one"].models["a"]
    peft_model = get_peft_model(
        backbone.model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=20)
    )
    steps = {
        "one": lambda rows: ours_step(models["one"], rows),
        "two": lambda rows: ours_step(models["two"], rows),
        "eight": lambda rows: ours_step(models["eight"], rows),
        "peft": lambda rows: peft_step(peft_model, reference, rows),
    }
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for step in range(args.steps + 1):  # step 0 warms every path up and is not counted
        rows = micro_batch(data.train, BATCH, 0, step)
        order = names[step % len(names) :] + names[: step % len(names)]
        for name in order:
            tick = time.perf_counter()
            steps[name](rows)
            if step:
                times[name].append(time.perf_counter() - tick)
        print(f"step {step}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names if step))
    median = {name: statistics.median(values) for name, values in times.items()}
    ratios = {
        "two / one": median["two"] / median["one"],
        "eight / one": median["eight"] / median["one"],
        "eight / peft": median["eight"] / median["peft"],
        "peft / one": median["peft"] / median["one"],
    }
    print("\n| variant | median step |\n|---|---|")
    for name in names:
        print(f"| {name} | {median[name]:.3f} s |")
    print("\n| ratio | value |\n|---|---|")
    for name, value in ratios.items():
        print(f"| {name} | {value:.3f} |")
    record = {
        "steps": args.steps,
        "batch": BATCH,
        "median_seconds": median,
        "ratios": ratios,
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
