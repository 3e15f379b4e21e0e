"""How far a soft-prompt training step is from the floor: the frozen model's own
forward + backward over the real tokens, with no prompt at all.

performance.md puts the floor of a shared front prompt at that cost plus the prompt's
own pass; this measures the gap, interleaved (A B, B A, ...), on SmolLM2-135M and
movie-sentiment batches of 8. The floor side sends its gradient to the input
embeddings (some leaf must need a gradient for a backward to run) and scores the same
two label-word rows at the answer position. Both sides reach the frozen model through
the model's injector (embeddings, the stack, the label words' head rows), so the floor
runs on a bf16 or int8 backbone as the soft prompt does (`--dtype`, `--quantize`).

    python benchmarks/soft_prompt_floor.py --steps 16
    python benchmarks/soft_prompt_floor.py --steps 2 --batch-size 2 --quantize int8
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.train.sampler import micro_batch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quantize", default=None, choices=[None, "int8", "nf4"])
    args = parser.parse_args()

    backbone = load_backbone(args.backbone, dtype=args.dtype, quantize=args.quantize)
    data = load_dataset("movie-sentiment")
    model = build_model(backbone, data, {"name": "soft-prompt", "n_tokens": 20}, {})
    injector = model.injector  # the frozen model's two ends and its stack, any dtype
    words = torch.tensor([ids[0] for ids in model.task.label_token_ids()])  # (C,)

    def soft_prompt_step(batch: dict[str, torch.Tensor]) -> None:
        model(batch).loss.backward()
        model.zero_grad(set_to_none=True)

    def floor_step(batch: dict[str, torch.Tensor]) -> None:
        inputs = injector.embed(batch["input_ids"]).detach().requires_grad_(True)  # (B, T, d)
        hidden = injector.run_core(inputs_embeds=inputs, attention_mask=batch["attention_mask"])
        answer = hidden.last_hidden_state[torch.arange(len(inputs)), batch["answer_index"]]
        scores = injector.logits(answer, words)  # (B, C) float32
        torch.nn.functional.cross_entropy(scores, batch["targets"]).backward()

    times = {"soft prompt": [], "floor": []}
    sides = [("soft prompt", soft_prompt_step), ("floor", floor_step)]
    for step in range(args.steps):
        batch = model.collate(micro_batch(data.train, args.batch_size, 0, step))
        for name, fn in sides if step % 2 == 0 else sides[::-1]:
            tick = time.perf_counter()
            fn(batch)
            times[name].append(time.perf_counter() - tick)
    median = {k: statistics.median(v) for k, v in times.items()}
    print("| | soft prompt (20 tokens) | floor (no prompt) | ratio |\n|---|---|---|---|")
    print(
        f"| median training step | {median['soft prompt']:.3f} s | {median['floor']:.3f} s | "
        f"{median['soft prompt'] / median['floor']:.2f}x |"
    )


if __name__ == "__main__":
    main()
