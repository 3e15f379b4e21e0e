"""Where a bf16 backbone's zero-shot drift comes from (issue 19 asks label log-probs
within 1e-2 of float32): the weights' rounding to bf16, or computing in bf16?

On the first --rows (64) movie-sentiment test rows (batches of 16, as dtype_memory.py scores them),
the log-probs of the two label words (softmax over the label words at the answer
position) are compared with the backbone held in float32, for

- bf16: bf16 weights and bf16 compute (`--dtype bfloat16` today);
- bf16 weights, float32 compute: the bf16 cache upcast to float32 (exact), so only the
  weights' rounding differs from float32 -- what holding bf16 and upcasting each layer
  for its compute would score;
- the same two with fp16 weights (the float32 backbone cast in memory, round to nearest
  as the bf16 cache is: 10 mantissa bits to bf16's 7, the same 2 bytes a parameter);
- plain transformers (what PEFT runs under a prompt-tuning model): the same cached
  folders loaded with `AutoModelForCausalLM.from_pretrained(torch_dtype=...)` and the
  same input ids, in float32 and in bf16, each compared with ours in that dtype and
  with float32.

Prints a Markdown table (max and mean |diff| over the 2 x rows log-probs) and writes
benchmarks/results/dtype_drift.json (one entry per backbone, merged into what is there).

    python benchmarks/dtype_drift.py --backbone smollm2-135m
    python benchmarks/dtype_drift.py --backbone qwen2.5-coder-1.5b --rows 16 --weights-only

Measured 2026-12-06 (max |diff|; SmolLM2-135M / 0.5B on 64 rows, 1.5B on 16): bf16
0.096 / 0.085 / 0.123; bf16 weights with float32 compute 0.031 / 0.033 / 0.028; fp16
weights with float32 compute 0.004 / 0.001 / 0.002; plain transformers bf16 equal to ours
bit for bit (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers import AutoModelForCausalLM  # noqa: E402

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.files import atomic_write_text  # noqa: E402
from softprompt.tasks.presets import task_defaults  # noqa: E402

BATCH = 16
OUT = Path("benchmarks/results/dtype_drift.json")


def ours(backbone, data, rows: int, cast: torch.dtype | None = None) -> tuple[torch.Tensor, dict]:
    """(rows, 2) label log-probs through softprompt's zero-shot path, and its batches;
    `cast` first casts the held weights (bf16/fp16 -> float32 is exact)."""
    if cast is not None:
        backbone.model.to(cast)
    model = build_model(backbone, data, {"name": "none"}, task_defaults("movie-sentiment"))
    test = data.test[:rows]
    batches = [model.collate(test[i : i + BATCH]) for i in range(0, rows, BATCH)]
    with torch.no_grad():
        scores = [model(batch).scores.float().log_softmax(-1) for batch in batches]  # (B, 2)
    words = torch.tensor(model.task.first_tokens)  # (2,)
    return torch.cat(scores), {"batches": batches, "words": words}


def plain(folder: Path, dtype: torch.dtype, inputs: dict) -> torch.Tensor:
    """The same rows through plain transformers: logits at the answer position."""
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype).eval()
    out = []
    with torch.no_grad():
        for batch in inputs["batches"]:
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits  # (B, T, V), right-padded rows
            answer = logits[torch.arange(len(logits)), batch["answer_index"]]  # (B, V)
            out.append(answer[:, inputs["words"]].float().log_softmax(-1))  # (B, 2)
    del model
    return torch.cat(out)


def diff(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    d = (a - b).abs()
    return {"max": float(d.max()), "mean": float(d.mean())}


def arm(
    backbone, data, rows: int, f32: torch.Tensor, dtype: torch.dtype, compute: bool, how: str
) -> tuple[dict[str, dict[str, float]], torch.Tensor | None]:
    """One half-precision arm, vs float32: `dtype` weights with `dtype` compute (when
    `compute`; fp16 compute is slow on a CPU) and the same weights upcast to float32 for
    the compute (the weights' rounding only). Leaves the backbone in float32. Returns the
    rows and the `dtype`-compute log-probs (None without `compute`)."""
    name = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    got, low = {}, None
    if compute:
        held = next(backbone.model.parameters()).dtype
        # no cast when loaded in `dtype`: .to() would also cast the float32 buffers it keeps
        low, _ = ours(backbone, data, rows, cast=None if held == dtype else dtype)
        got[f"{name} weights + {name} compute ({how})"] = diff(low, f32)
    else:
        backbone.model.to(dtype)
    upcast, _ = ours(backbone, data, rows, cast=torch.float32)
    got[f"{name} weights, float32 compute (weight rounding only)"] = diff(upcast, f32)
    return got, low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=64, help="test rows scored")
    parser.add_argument(
        "--weights-only",
        action="store_true",
        help="skip fp16 compute (slow on a CPU) and plain transformers: what fits a 1.5B "
        "run in a few minutes here",
    )
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    full = not args.weights_only
    torch.manual_seed(0)
    data = load_dataset("movie-sentiment")

    backbone = load_backbone(args.backbone, dtype="float32")
    folder32 = Path(backbone.model.config._name_or_path)  # the cached HF folder
    f32, inputs = ours(backbone, data, args.rows)
    # fp16: the float32 backbone cast in memory, round to nearest as a cache does
    rows, _ = arm(backbone, data, args.rows, f32, torch.float16, full,
                  "float32 backbone cast in memory")  # fmt: skip
    del backbone
    gc.collect()
    if full:
        plain32 = plain(folder32, torch.float32, inputs)
        rows["plain transformers float32 vs ours float32"] = diff(plain32, f32)
    backbone = load_backbone(args.backbone, dtype="bfloat16")
    folder16 = Path(backbone.model.config._name_or_path)
    bf16_rows, bf16 = arm(backbone, data, args.rows, f32, torch.bfloat16, True,
                          "ours, --dtype bfloat16")  # fmt: skip
    rows.update(bf16_rows)
    del backbone
    gc.collect()
    if full:
        plain16 = plain(folder16, torch.bfloat16, inputs)
        rows["plain transformers bf16"] = diff(plain16, f32)
        rows["plain transformers bf16 vs ours bf16"] = diff(plain16, bf16)

    print(f"| {args.backbone}, vs float32 ({args.rows} rows x 2 label log-probs) | max | mean |")
    print("|---|---|---|")
    for name, d in rows.items():
        print(f"| {name} | {d['max']:.4f} | {d['mean']:.4f} |")
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {}
    record[args.backbone] = {"rows": args.rows, "batch": BATCH, "diffs": rows}
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
