"""Memory of the LoRA baseline against PEFT's own LoRA on the same backbone: RSS growth
from the loaded backbone (every weight paged in) through building the model and a few
training steps, and the peak (VmHWM) over that.

* `peft`: `get_peft_model` on the backbone itself (PEFT wraps the model in place: the
  least a LoRA can hold), a label-word loss on the last position, AdamW on the adapters.
* `ours`: `TunedModel(kind="lora")` (what `compare` and `train --compare lora` train),
  through softprompt's own forward and loss, AdamW on its trainable parameters.

Each run is its own process (a process's peak RSS only grows), in rounds that interleave
the two (A B A B), since this shared machine drifts. Prints a Markdown table and the
ratio ours / PEFT.

    python benchmarks/baseline_memory.py [--rounds 2] [--steps 2] [--batch-size 8]

Measured 2026-12-06 on SmolLM2-135M (float32, 540 MB of weights; 2 steps of 8 rows):
before `TunedModel` stopped deep-copying the backbone for LoRA, building ours grew RSS by
550 MiB (PEFT 32) and its peak was 1,158 MiB against PEFT's 664 (1.74x, 1 round); after,
39 MiB building and a peak of 639 MiB against PEFT's 661 (0.97x, 2 rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, torch
from softprompt.estimate import _status_bytes
def status(key):  # MiB
    return _status_bytes(key) / 2**20
kind, steps, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
from softprompt.backbones import load_backbone
from softprompt.data import load_dataset
from softprompt.recipes.baselines import TuneConfig, TunedModel
from softprompt.tasks.presets import task_config_for
torch.manual_seed(0)
backbone = load_backbone("smollm2-135m")
with torch.no_grad():
    [float(p.float().sum()) for p in backbone.model.parameters()]  # page in the weights
data = load_dataset("movie-sentiment")
rows = data.train[: steps * batch_size]
before = status("VmRSS")
if kind == "ours":
    model = TunedModel(backbone, task_config_for(data, {}), TuneConfig(kind="lora"))
    params = list(model.trainable_parameters())
    def loss_of(chunk):
        return model(model.collate(chunk)).loss
else:
    from peft import LoraConfig, get_peft_model
    config = LoraConfig(r=8, lora_alpha=2.0, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(backbone.model, config)
    tok = backbone.tokenizer
    words = [tok.encode(" " + w, add_special_tokens=False)[0] for w in data.labels]
    def loss_of(chunk):
        texts = [f"{e.text} sentiment:" for e in chunk]
        enc = tok(texts, return_tensors="pt", padding=True, padding_side="left")
        logits = model(**enc).logits[:, -1, words]  # (batch, labels)
        target = torch.tensor([data.labels.index(e.label) for e in chunk])
        return torch.nn.functional.cross_entropy(logits, target)
    params = [p for p in model.parameters() if p.requires_grad]
built = status("VmRSS") - before
optimizer = torch.optim.AdamW(params, lr=1e-3)
for i in range(steps):
    loss_of(rows[i * batch_size : (i + 1) * batch_size]).backward()
    optimizer.step()
    optimizer.zero_grad()
print(json.dumps({"kind": kind, "built_mib": built, "peak_mib": status("VmHWM") - before,
                  "trainable": sum(p.numel() for p in params)}))
"""


def _run(kind: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH="src")
    argv = [sys.executable, "-c", CHILD, kind, str(args.steps), str(args.batch_size)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"{kind} run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"peft": [], "ours": []}
    for _ in range(args.rounds):
        for kind in runs:  # A B A B
            runs[kind].append(_run(kind, args))
    print("| LoRA r=8 on SmolLM2-135M | trainable | RSS growth building | peak RSS growth |")
    print("|---|---|---|---|")
    for kind, got in runs.items():
        built = max(r["built_mib"] for r in got)
        peak = max(r["peak_mib"] for r in got)
        print(f"| {kind} | {got[0]['trainable']:,} | {built:.0f} MiB | {peak:.0f} MiB |")
    ratio = max(r["peak_mib"] for r in runs["ours"]) / max(r["peak_mib"] for r in runs["peft"])
    print(f"\npeak RSS growth, ours / PEFT: {ratio:.2f} ({args.rounds} rounds, max of each)")


if __name__ == "__main__":
    main()
