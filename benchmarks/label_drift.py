"""Does scoring the label words in float32 bring a bf16 backbone's zero-shot label
log-probs nearer float32's (issue 19 asks within 1e-2)? An experiment, not a feature:
the first 64 movie-sentiment test rows scored as is, with the label words' LM-head rows
in float32 (a few rows, so cheap), and with the final norm in float32 as well.

    python benchmarks/label_drift.py qwen2.5-coder-1.5b float32 runs/f32.json
    python benchmarks/label_drift.py qwen2.5-coder-1.5b bfloat16 runs/bf16.json runs/f32.json

Measured 2026-12-06 on Qwen2.5-Coder-1.5B in bf16, max |diff| from float32 over the
128 log-probs: as is 0.184, float32 label rows 0.162, float32 norm + label rows 0.157
(means 0.028 / 0.027 / 0.026; the float32 reference there was dtype_memory.py's float32
run, the same rows and scoring). SmolLM2-135M: 0.096 / 0.078 / 0.085. The drift comes
from the bf16 transformer layers, not from the head.
"""

from __future__ import annotations

import json
import math
import sys
import types

import torch
import torch.nn.functional as F

import softprompt.inject.head as head
from softprompt.api import build_model
from softprompt.backbones import load_backbone
from softprompt.data import load_dataset
from softprompt.tasks.presets import task_defaults

ROWS = 64


def _float32_label_rows(original):
    def call(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None):
        if token_ids is None:
            return original(self, hidden, token_ids)
        bias = None if self.bias is None else self.bias[token_ids].float()
        return F.linear(hidden.float(), self.weight[token_ids].float(), bias)  # (..., W)

    return call


def _float32_norm(norm: torch.nn.Module) -> None:
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # RMSNorm, kept float32
        hidden = hidden.float()
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight.float() * hidden

    norm.forward = types.MethodType(forward, norm)


def main() -> None:
    name, dtype, out = sys.argv[1:4]
    data = load_dataset("movie-sentiment")
    backbone = load_backbone(name, dtype=dtype)
    model = build_model(backbone, data, {"name": "none"}, task_defaults("movie-sentiment"))
    texts = [e.text for e in data.test[:ROWS]]

    def scores() -> list[list[float]]:
        with torch.no_grad():
            return [[math.log(max(p["scores"][k], 1e-30)) for k in sorted(p["scores"])]
                    for i in range(0, len(texts), 16) for p in model.predict(texts[i:i + 16])]  # fmt: skip

    results = {"as is": scores()}
    if dtype != "float32":
        head.LMHead.__call__ = _float32_label_rows(head.LMHead.__call__)
        results["float32 label rows"] = scores()
        _float32_norm(backbone.model.model.norm)
        results["float32 norm + label rows"] = scores()
    with open(out, "w") as handle:
        json.dump(results, handle)
    if len(sys.argv) > 4:
        with open(sys.argv[4]) as handle:
            reference = json.load(handle)["as is"]
        for variant, got in results.items():
            pairs = zip(got, reference, strict=True)
            diffs = [abs(a - b) for r, f in pairs for a, b in zip(r, f, strict=True)]
            print(f"{variant}: max {max(diffs):.4f}, mean {sum(diffs) / len(diffs):.4f}")


if __name__ == "__main__":
    main()
