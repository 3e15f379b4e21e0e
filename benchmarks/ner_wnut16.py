"""WNUT-16 named entities on frozen MiniLM: head-only vs soft prompt vs P-tuning v2.

Same backbone, data, steps, batch and seed for each method; each keeps its best
prompt on validation and is scored on the 239 test tweets with entity-level F1
(exact type and span, seqeval's default mode). Prints a Markdown table and writes
benchmarks/results/ner_wnut16.json.

    python benchmarks/ner_wnut16.py --steps 400
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from softprompt.api import build_model
from softprompt.backbones import load_backbone
from softprompt.data import load_dataset
from softprompt.evaluate import evaluate
from softprompt.model import PromptModel
from softprompt.train import TrainConfig, train

METHODS = {
    "head only (none)": {"name": "none"},
    "soft prompt, 16 tokens": {"name": "soft-prompt", "n_tokens": 16},
    "P-tuning v2 (deep prompts), 16 tokens": {"name": "prefix-tuning", "n_tokens": 16},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--out", default="benchmarks/results/ner_wnut16.json")
    args = parser.parse_args()
    backbone = load_backbone("minilm-l6")
    data = load_dataset("wnut16-ner")
    config = TrainConfig(
        steps=args.steps, batch_size=16, lr=args.lr, warmup_steps=20, eval_every=100,
        eval_examples=0, seed=0,
    )  # fmt: skip
    rows = []
    for label, method in METHODS.items():
        model = build_model(backbone, data, method, {})
        with tempfile.TemporaryDirectory() as out:
            tick = time.perf_counter()
            result = train(model, data, config, out, progress=True)
            seconds = time.perf_counter() - tick
            best = PromptModel.load(result.prompt_path, backbone)
            scores = evaluate(best, data.test)
            size = result.prompt_path.stat().st_size
        rows.append({"method": label, **scores, "trainable": best.num_trainable(),
                     "file_bytes": size, "train_seconds": seconds, "best_step": result.best_step})  # fmt: skip
        print(rows[-1], flush=True)
    print("\n| method | test entity F1 | precision | recall | token accuracy | trainable | file |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['entity_f1']:.3f} | {r['entity_precision']:.3f} | "
              f"{r['entity_recall']:.3f} | {r['accuracy']:.3f} | {r['trainable']:,} | "
              f"{r['file_bytes'] / 1024:.0f} KiB |")  # fmt: skip
    Path(args.out).write_text(
        json.dumps({"steps": args.steps, "lr": args.lr, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
