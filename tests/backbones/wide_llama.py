"""A llama wide enough that its Linear weights dominate (12.6M parameters, 48 MB in
float32), saved as an HF folder, and a child process that loads it and reports how its
resident memory grew: the load-peak tests of int8 and nf4 share both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

LOAD_PEAK_SCRIPT = """
import gc, json, sys
from softprompt.backbones import load_backbone

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

small, wide, quantize = sys.argv[1:4]
load_backbone(small, quantize=quantize)  # a tiny model: the lazy imports, outside
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
held = load_backbone(wide, quantize=quantize)
gc.collect()
print(json.dumps({"peak": status("VmHWM") - before, "held": status("VmRSS") - before}))
"""  # argv: a tiny folder (warms the imports), the measured folder, the quantization


def save_wide_llama(folder: Path) -> int:
    """Saves the model and tiny_llama's tokenizer into `folder`; returns its float32 bytes."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from softprompt.backbones.tiny import tiny_llama

    tok = tiny_llama().tokenizer
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        tie_word_embeddings=True,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return sum(p.numel() * 4 for p in model.parameters())


def child_report(script: str, *argv: str) -> dict:
    """Runs `script` in a fresh process (its own peak memory) and returns the JSON object
    its last line prints."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
