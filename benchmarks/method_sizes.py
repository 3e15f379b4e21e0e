"""What each method trains and stores on SmolLM2-135M (movie-sentiment framing).

For every registered text method at the README's settings: trainable parameters while
training, the size of the prompt file training writes (which keeps any encoder or MLP,
so runs resume), and the size after `softprompt export` (the prompt alone, what a store
or server holds). Nothing is trained: sizes do not depend on the values. Prints a
Markdown table and writes benchmarks/results/method_sizes.json.

    python benchmarks/method_sizes.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from softprompt.api import build_model
from softprompt.backbones import load_backbone
from softprompt.data import load_dataset
from softprompt.tasks.presets import task_defaults

METHODS = {
    "soft-prompt, 20 tokens": {"name": "soft-prompt", "n_tokens": 20},
    "p-tuning, 20 tokens, MLP encoder": {"name": "p-tuning", "n_tokens": 20, "encoder": "mlp"},
    "p-tuning, 20 tokens, LSTM encoder": {"name": "p-tuning", "n_tokens": 20, "encoder": "lstm"},
    "prefix-tuning, 10 tokens, MLP": {"name": "prefix-tuning", "n_tokens": 10},
    "prefix-tuning, 10 tokens, direct": {
        "name": "prefix-tuning",
        "n_tokens": 10,
        "reparameterize": False,
    },
    "multitask-prompt, 20 tokens, rank 1 (one task)": {"name": "multitask-prompt", "n_tokens": 20},
}


def main() -> None:
    backbone = load_backbone("smollm2-135m")
    data = load_dataset("movie-sentiment")
    rows = []
    for label, method in METHODS.items():
        model = build_model(backbone, data, method, task_defaults("movie-sentiment"))
        with tempfile.TemporaryDirectory() as folder:
            trained = model.save(Path(folder) / "trained.safetensors").stat().st_size
            flat = model.flattened()
            exported = flat.save(Path(folder) / "export.safetensors").stat().st_size
        rows.append({"method": label, "trainable": model.num_trainable(),
                     "file_bytes": trained, "export_bytes": exported,
                     "export_method": flat.method_name})  # fmt: skip
    print("| method | trainable while training | prompt file | after export (as) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['trainable']:,} | {_size(r['file_bytes'])} | "
              f"{_size(r['export_bytes'])} ({r['export_method']}) |")  # fmt: skip
    out = Path("benchmarks/results/method_sizes.json")
    out.write_text(json.dumps({"backbone": "smollm2-135m", "rows": rows}, indent=2) + "\n")


def _size(n: int) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1024**2 else f"{n / 1024**2:,.1f} MiB"


if __name__ == "__main__":
    main()
