"""Trained prompts exported to PEFT score the held-out set as they score here.

For each method: train a prompt on movie-sentiment with SmolLM2-135M (a few steps),
export it with `export_peft`, load it with `PeftModel.from_pretrained` onto a fresh copy
of the backbone, and score the test sentences both ways: softprompt's own scores, and
PEFT's logits of the label words at the answer position (PEFT returns the virtual
positions too for the embedding types). Prints test accuracy from each side, how many
predictions agree and the largest gap in class probability.

    python benchmarks/peft_interop_movie.py --steps 60 --rows 300
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import peft  # noqa: E402

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.interop.peft import export_peft  # noqa: E402
from softprompt.model import PromptModel  # noqa: E402
from softprompt.train import TrainConfig, train  # noqa: E402

METHODS = {
    "soft-prompt": ({"n_tokens": 20}, 3e-2),
    "p-tuning": ({"n_tokens": 10, "hidden": 256}, 3e-3),
    "prefix-tuning": ({"n_tokens": 10, "hidden": 256}, 1e-2),
    "multitask-prompt": ({"n_tokens": 20, "rank": 2}, 3e-2),
}


@torch.no_grad()
def probabilities(model: PromptModel, theirs, examples, batch: int = 32):
    """(rows, C) class probabilities from softprompt and from the PEFT model."""
    words = torch.tensor([ws[0][0] for ws in model.task.word_ids])  # first token per label
    front = (
        0 if model.method_name == "prefix-tuning" else theirs.active_peft_config.num_virtual_tokens
    )
    ours, peft_side = [], []
    for start in range(0, len(examples), batch):
        rows = model.collate(examples[start : start + batch])
        ours.append(model(rows).scores.softmax(-1))
        extra = {}
        if model.method_name == "multitask-prompt":
            extra["task_ids"] = torch.zeros(len(rows["input_ids"]), dtype=torch.long)
        logits = theirs(
            input_ids=rows["input_ids"], attention_mask=rows["attention_mask"], **extra
        ).logits
        at = front + rows["answer_index"]  # (B,)
        peft_side.append(logits[torch.arange(len(at)), at][:, words].softmax(-1))
    return torch.cat(ours), torch.cat(peft_side)


def run(method: str, steps: int, rows: int, work: Path) -> dict:
    options, lr = METHODS[method]
    backbone = load_backbone("smollm2-135m")
    data = load_dataset("movie-sentiment")
    model = build_model(backbone, data, {"name": method, **options}, {})
    config = TrainConfig(steps=steps, lr=lr, eval_every=steps, eval_examples=64)
    result = train(model, data, config, work / method, progress=False)
    trained = PromptModel.load(result.prompt_path, backbone)
    export_peft(trained, work / f"{method}-peft")
    fresh = load_backbone("smollm2-135m").model  # PEFT wraps its own copy
    theirs = peft.PeftModel.from_pretrained(fresh, work / f"{method}-peft").eval()
    test = data.test[:rows]
    mine, peft_probs = probabilities(trained, theirs, test)
    targets = torch.tensor([trained.task.config.labels.index(e.label) for e in test])
    return {
        "method": method,
        "steps": steps,
        "rows": len(test),
        "accuracy_softprompt": float((mine.argmax(-1) == targets).float().mean()),
        "accuracy_peft": float((peft_probs.argmax(-1) == targets).float().mean()),
        "predictions_agree": int((mine.argmax(-1) == peft_probs.argmax(-1)).sum()),
        "max_probability_gap": float((mine - peft_probs).abs().max()),
        "adapter_bytes": (work / f"{method}-peft" / "adapter_model.safetensors").stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--json", default="benchmarks/results/peft_interop_movie.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            results.append(run(method, args.steps, args.rows, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
            save(Path(args.json), results[-1])
    print("\n| method | test acc (softprompt) | test acc (PEFT, exported) | agree | max prob gap |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['method']} | {r['accuracy_softprompt']:.4f} | {r['accuracy_peft']:.4f} "
            f"| {r['predictions_agree']}/{r['rows']} | {r['max_probability_gap']:.1e} |"
        )


def save(path: Path, result: dict) -> None:
    """Merge one method's result into the JSON file (runs of some methods add up)."""
    kept = json.loads(path.read_text()) if path.is_file() else []
    kept = [r for r in kept if r["method"] != result["method"]] + [result]
    kept.sort(key=lambda r: list(METHODS).index(r["method"]))
    path.write_text(json.dumps(kept, indent=2) + "\n")


if __name__ == "__main__":
    main()
