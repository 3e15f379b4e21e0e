"""`softprompt estimate` against what a real run uses (issue 19: within 15%).

Three fresh processes on the same backbone, dtype, batch and row length:
  estimate  `softprompt.estimate.estimate` (its calibration at small batches, extrapolated)
  train     two soft-prompt training steps; the step's memory is the RSS peak (VmHWM,
            reset through /proc/self/clear_refs) minus the RSS just before the steps, and
            the process peak is that VmHWM itself (weights, runtime and all; the reset
            leaves out the transient of loading, which the estimate does not model)
  serve     two no-grad forwards, measured the same way
glibc's mmap threshold is fixed at 128 KiB in all three (see tests/core/test_estimate.py).
Prints the predicted and measured figures and their ratios as JSON.

    python benchmarks/estimate_check.py --backbone qwen2.5-coder-0.5b --dtype bfloat16 \
        [--quantize int8] --batch-size 4 --seq-len 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    from softprompt.backbones import load_backbone
    from softprompt.estimate import CLEAR_REFS, _release_freed, _status_bytes, estimate
    from softprompt.estimate import rss_bytes, synthetic_rows
    from softprompt.model import PromptModel
    from softprompt.tasks import TaskConfig

    what, name, dtype, quantize, batch, seq = sys.argv[1:7]
    batch, seq = int(batch), int(seq)
    runtime = rss_bytes() or 0  # before the weights, as `softprompt estimate` counts it
    backbone = load_backbone(name, dtype=dtype, quantize=quantize)
    if what == "estimate":
        result = estimate(backbone, batch_size=batch, seq_len=seq, runtime_bytes=runtime)
        print(json.dumps(result.to_dict()))
        sys.exit()
    task = TaskConfig(labels=["negative", "positive"], template="{text}", max_text_tokens=seq)
    prompt = PromptModel(backbone, task, "soft-prompt")
    optimizer = torch.optim.AdamW(prompt.trainable_parameters(), lr=1e-6)
    rows = prompt.collate(synthetic_rows(seq, batch))
    _release_freed()
    CLEAR_REFS.write_text("5")
    before = _status_bytes("VmRSS")
    for _ in range(2):
        if what == "train":
            out = prompt(rows)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                prompt(rows)
    print(json.dumps({"step": _status_bytes("VmHWM") - before, "process": _status_bytes("VmHWM")}))
    """
)


def run(what: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    command = [sys.executable, "-c", SCRIPT, what, args.backbone, args.dtype, args.quantize]
    command += [str(args.batch_size), str(args.seq_len)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--quantize", default="none", help="none or int8 (as --quantize)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()
    est = run("estimate", args)
    train, serve = run("train", args), run("serve", args)
    predicted_step = est["train_step_bytes"] + 8 * est["prompt_parameters"]  # + AdamW state
    mib = 2**20
    report = {
        "setup": vars(args),
        "train_step_mib": {"estimated": predicted_step / mib, "measured": train["step"] / mib},
        "serve_step_mib": {
            "estimated": est["serve_step_bytes"] / mib,
            "measured": serve["step"] / mib,
        },
        "train_peak_mib": {
            "estimated": est["train_peak_bytes"] / mib,
            "measured": train["process"] / mib,
        },
        "serve_peak_mib": {
            "estimated": est["serve_peak_bytes"] / mib,
            "measured": serve["process"] / mib,
        },
    }
    for key in ("train_step_mib", "serve_step_mib", "train_peak_mib", "serve_peak_mib"):
        pair = report[key]
        pair["ratio"] = pair["estimated"] / pair["measured"] if pair["measured"] else None
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
