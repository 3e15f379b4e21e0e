"""Prefix tuning, P-tuning and multitask prompt tuning: softprompt vs PEFT, side by side.

The protocol of benchmarks/peft_prompt_tuning.py (whose helpers this reuses), for the
other prompt methods PEFT has:

    prefix-mlp     PrefixTuningConfig(prefix_projection=True)   vs prefix-tuning (MLP)
    prefix-direct  PrefixTuningConfig(prefix_projection=False)  vs prefix-tuning, reparameterize: false
    ptuning-mlp    PromptEncoderConfig(MLP)                     vs p-tuning, encoder: mlp
    ptuning-lstm   PromptEncoderConfig(LSTM)                    vs p-tuning, encoder: lstm
    multitask      MultitaskPromptTuningConfig(num_tasks=2)     vs two multitask-prompt tasks
                   (movie-sentiment + election-tweets rows mixed 4 + 4 in every batch)

Same frozen SmolLM2 object, same batches, same AdamW and schedule, steps interleaved
(A B, B A, ...). PEFT's trainable tensors are overwritten with ours before step 1 where
the two architectures match, and the script reports how far the two initial prompts
are apart (0 where everything could be copied; PEFT's 3-layer P-tuning MLP gets our
input embeddings only, its prefix MLP, which reads (n, kv_heads * head_dim) embeddings
rather than (n, d), our output layer only).
PEFT is driven as its docs train a causal LM (label word appended, labels -100
elsewhere, `model(**batch).loss`); accuracy is scored the same way for both (label-word
logits at the answer position of held-out sentences).

Memory: bytes the autograd graph saves for backward in one step (exact), and the peak
RSS growth of a few steps in a fresh child process per side.

    OMP_NUM_THREADS=1 python benchmarks/peft_methods.py --method prefix-mlp --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from peft import (  # noqa: E402
    MultitaskPromptTuningConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    TaskType,
    get_peft_model,
)
from peft_prompt_tuning import (  # noqa: E402
    _status_kb,
    peft_batch,
    saved_bytes,
    side_by_side,
    timed_step,
)

from softprompt.api import build_model  # noqa: E402
from softprompt.backbones import load_backbone  # noqa: E402
from softprompt.data import load_dataset  # noqa: E402
from softprompt.model import MultiTaskModel  # noqa: E402
from softprompt.train import TrainConfig  # noqa: E402
from softprompt.train.sampler import micro_batch  # noqa: E402

N_TOKENS = 20
BATCH = 8
PREFIX_HIDDEN = 512  # both MLPs: d -> 512 -> L * 2 * kv_heads * head_dim
PTUNING_HIDDEN = 256  # ours: Linear-ReLU-Linear of width 256; PEFT: 3 layers of 256
LSTM_HALF = 128  # per direction: PEFT encoder_hidden_size 128 == ours hidden 256
DATASETS = {"multitask": ("movie-sentiment", "election-tweets")}
METHODS = {
    "prefix-mlp": {"name": "prefix-tuning", "reparameterize": True, "hidden": PREFIX_HIDDEN},
    "prefix-direct": {"name": "prefix-tuning", "reparameterize": False},
    "ptuning-mlp": {"name": "p-tuning", "encoder": "mlp", "hidden": PTUNING_HIDDEN},
    "ptuning-lstm": {"name": "p-tuning", "encoder": "lstm", "hidden": 2 * LSTM_HALF},
    "multitask": {"name": "multitask-prompt", "rank": 1},
}
LR = {"prefix-mlp": 1e-2, "prefix-direct": 1e-2}  # the others 3e-2, as soft prompts


def peft_config(method: str):
    common = {"task_type": TaskType.CAUSAL_LM, "num_virtual_tokens": N_TOKENS}
    if method.startswith("prefix"):
        projection = method == "prefix-mlp"
        return PrefixTuningConfig(
            **common, prefix_projection=projection, encoder_hidden_size=PREFIX_HIDDEN
        )
    if method == "ptuning-mlp":
        return PromptEncoderConfig(
            **common, encoder_reparameterization_type="MLP", encoder_hidden_size=PTUNING_HIDDEN
        )
    if method == "ptuning-lstm":
        return PromptEncoderConfig(
            **common,
            encoder_reparameterization_type="LSTM",
            encoder_hidden_size=LSTM_HALF,
            encoder_dropout=0.0,
        )
    return MultitaskPromptTuningConfig(**common, num_tasks=2, num_ranks=1)


class Side:
    """One method of ours: a MultiTaskModel of one task (or of the two multitask tasks)."""

    def __init__(self, backbone, method: str) -> None:
        names = DATASETS.get(method, ("movie-sentiment",))
        self.data = {name: load_dataset(name) for name in names}
        options = {**METHODS[method], "n_tokens": N_TOKENS, "init": "vocab"}
        shared: dict = {}
        self.model = MultiTaskModel(
            {n: build_model(backbone, d, options, {}, shared) for n, d in self.data.items()}
        )

    def rows(self, step: int, seed: int) -> list[tuple[str, object]]:
        """Batch `step`: BATCH rows, split evenly over the tasks."""
        share = BATCH // len(self.data)
        return [
            (name, e)
            for name, d in self.data.items()
            for e in micro_batch(d.train, share, seed, step)
        ]

    def loss(self, rows):
        return self.model(self.model.collate(rows)).loss


def copy_init(method: str, ours: MultiTaskModel, peft_model) -> float:
    """Overwrite PEFT's trainable tensors with ours; the largest difference of the two
    initial prompts (virtual tokens or per-layer K/V) as each side computes them."""
    encoder = peft_model.prompt_encoder.default
    first = next(iter(ours.models.values())).method
    with torch.no_grad():
        if method == "prefix-mlp":
            # PEFT's MLP reads (n, kv_heads * head_dim) random embeddings, ours (n, d) from
            # the vocabulary: only the output layer (512 -> L * 2 * kvh * hd) can be shared
            encoder.transform[2].load_state_dict(first.mlp[2].state_dict())
        elif method == "prefix-direct":
            n = first.prefix.shape[3]  # (L, 2, kvh, n, hd) -> (n, L * 2 * kvh * hd)
            encoder.embedding.weight.copy_(first.prefix.permute(3, 0, 1, 2, 4).reshape(n, -1))
        elif method == "ptuning-mlp":
            encoder.embedding.weight.copy_(first.embeddings)  # PEFT's MLP has 3 layers
        elif method == "ptuning-lstm":
            encoder.embedding.weight.copy_(first.embeddings)
            encoder.lstm_head.load_state_dict(first.encoder.lstm.state_dict())
            encoder.mlp_head.load_state_dict(first.encoder.head.state_dict())
        else:
            encoder.embedding.weight.copy_(first.shared.embeddings)
            for k, model in enumerate(ours.models.values()):
                encoder.prefix_task_cols[k].copy_(model.method.task_rows)  # (n, r)
                encoder.prefix_task_rows[k].copy_(model.method.task_cols.T)  # (r, d)
        return init_gap(method, ours, peft_model)


@torch.no_grad()
def init_gap(method: str, ours: MultiTaskModel, peft_model) -> float:
    first = next(iter(ours.models.values())).method
    if method.startswith("prefix"):
        theirs = peft_model.get_prompt(1)  # a Cache: per layer (1, kvh, n, hd)
        mine = first.kv_tensor()  # (L, 2, kvh, n, hd)
        return max(
            float((layer.keys[0] - mine[i, 0]).abs().max().item())
            for i, layer in enumerate(theirs.layers)
        )
    if method == "multitask":
        theirs = peft_model.get_prompt(2, task_ids=torch.tensor([0, 1]))  # (2, n, d)
        mine = torch.stack([m.method().embeds for m in ours.models.values()])
        return float((theirs - mine).abs().max().item())
    theirs = peft_model.get_prompt(1)[0]  # (n, d)
    return float((theirs - first().embeds).abs().max().item())


def peft_inputs(method: str, side: Side, rows) -> dict:
    """PEFT's batch for `rows`, each task's rows templated by that task (task ids for MPT)."""
    parts = [(name, [e for n, e in rows if n == name]) for name in side.data]
    parts = [(name, examples) for name, examples in parts if examples]
    batches = [peft_batch(side.model.models[name], examples) for name, examples in parts]
    width = max(b["input_ids"].shape[1] for b in batches)
    pad = side.model.backbone.spec.pad_token_id
    fills = {"input_ids": pad, "attention_mask": 0, "labels": -100}
    batch = {
        key: torch.cat(
            [
                torch.nn.functional.pad(b[key], (0, width - b[key].shape[1]), value=v)
                for b in batches
            ]
        )
        for key, v in fills.items()
    }
    if method == "multitask":
        tasks = list(side.data)
        batch["task_ids"] = torch.tensor(
            [tasks.index(name) for name, ex in parts for _ in ex], dtype=torch.long
        )
    return batch


def peft_loss(method: str, peft_model, side: Side, rows):
    return peft_model(**peft_inputs(method, side, rows)).loss


@torch.no_grad()
def accuracy(method: str, side: Side, peft_model, examples: int, batch_size: int = 32):
    """Test accuracy of both sides per task, from the label-word logits at the answer."""
    result = {}
    offset = 0 if method.startswith("prefix") else N_TOKENS  # PEFT's logits include the prompt
    for k, (name, data) in enumerate(side.data.items()):
        model, rows = side.model.models[name], data.test[:examples]
        words = torch.tensor([ws[0][0] for ws in model.task.word_ids])
        ours = theirs = 0
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            out = model(model.collate(chunk))
            ours += int((out.scores.argmax(-1) == out.targets).sum())
            batch = model.task.collate(chunk)
            extra = {"task_ids": torch.full((len(chunk),), k)} if method == "multitask" else {}
            logits = peft_model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra
            ).logits
            answer = logits[torch.arange(len(chunk)), offset + batch["answer_index"]][:, words]
            theirs += int((answer.argmax(-1) == batch["targets"]).sum())
        result[name] = {"softprompt": ours / len(rows), "peft": theirs / len(rows)}
    return result


def setup(backbone_name: str, method: str):
    backbone = load_backbone(backbone_name)
    side = Side(backbone, method)
    peft_model = get_peft_model(backbone.model, peft_config(method))
    gap = copy_init(method, side.model, peft_model)
    return side, peft_model, gap


def trainable(side_name: str, side: Side, peft_model) -> list[torch.nn.Parameter]:
    if side_name == "softprompt":
        return side.model.trainable_parameters()
    return [p for p in peft_model.parameters() if p.requires_grad]


def child(method: str, side_name: str, backbone_name: str, steps: int) -> None:
    """Fresh process: peak-RSS growth of `steps` training steps of one side."""
    side, peft_model, _ = setup(backbone_name, method)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    base = _status_kb("VmHWM")
    params = trainable(side_name, side, peft_model)
    opt = torch.optim.AdamW(params, lr=1e-2)
    for step in range(steps):
        rows = side.rows(step, 0)
        if side_name == "softprompt":
            fn = lambda rows=rows: side.loss(rows)  # noqa: E731
        else:
            fn = lambda rows=rows: peft_loss(method, peft_model, side, rows)  # noqa: E731
        timed_step(fn, params, opt, 1e-2)
    print(json.dumps({"rss_growth_mb": (_status_kb("VmHWM") - base) / 1024}))


def measure_memory(method: str, backbone_name: str, steps: int) -> dict[str, float]:
    out = {}
    for side_name in ("softprompt", "peft"):
        args = ["--method", method, "--child", side_name, "--backbone", backbone_name]
        proc = subprocess.run(
            [sys.executable, __file__, *args, "--memory-steps", str(steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[side_name] = json.loads(proc.stdout.strip().splitlines()[-1])["rss_growth_mb"]
    return out


def run(args) -> dict:
    torch.manual_seed(0)
    side, peft_model, gap = setup(args.backbone, args.method)
    config = TrainConfig(
        steps=args.steps, batch_size=BATCH, lr=LR.get(args.method, 3e-2), warmup_steps=5
    )
    params = {s: trainable(s, side, peft_model) for s in ("softprompt", "peft")}
    opts = {
        s: torch.optim.AdamW(p, lr=config.lr, weight_decay=config.weight_decay)
        for s, p in params.items()
    }
    losses = {
        "softprompt": lambda rows: side.loss(rows),
        "peft": lambda rows: peft_loss(args.method, peft_model, side, rows),
    }
    first = side.rows(0, config.seed)
    activation = {s: saved_bytes(lambda s=s: losses[s](first)) for s in losses}
    side.model.zero_grad(set_to_none=True)
    peft_model.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"softprompt": [], "peft": []}
    for step in range(args.steps):
        rows = side.rows(step, config.seed)
        order = ["softprompt", "peft"] if step % 2 == 0 else ["peft", "softprompt"]
        for s in order:
            fn = lambda s=s, rows=rows: losses[s](rows)  # noqa: E731
            seconds, _ = timed_step(fn, params[s], opts[s], config.lr_at(step))
            times[s].append(seconds)
        if (step + 1) % 10 == 0:
            med = {s: statistics.median(v) for s, v in times.items()}
            print(f"{args.method} step {step + 1}: {med}", flush=True)
    acc = accuracy(args.method, side, peft_model, args.eval_examples)
    memory = measure_memory(args.method, args.backbone, args.memory_steps)
    return {
        "method": args.method,
        "ours": METHODS[args.method],
        "peft": type(peft_config(args.method)).__name__,
        "backbone": args.backbone,
        "steps": args.steps,
        "batch_size": BATCH,
        "n_tokens": N_TOKENS,
        "lr": config.lr,
        "initial_prompt_max_difference": gap,
        "trainable_parameters": {s: sum(p.numel() for p in v) for s, v in params.items()},
        **side_by_side(times, acc, activation, memory),
    }


def table(path: Path) -> None:
    """The recorded results as a markdown table (README)."""
    print(
        "| method | PEFT config | median step ours / PEFT | PEFT / ours (medians; per pair) "
        "| saved activations "
        "ours / PEFT | peak RSS growth ours / PEFT | test accuracy ours / PEFT |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in json.loads(path.read_text()).items():
        med, act, rss = r["median_step_seconds"], r["saved_activation_mb"], r["peak_rss_growth_mb"]
        acc = ", ".join(f"{a['softprompt']:.2f} / {a['peft']:.2f}" for a in r["accuracy"].values())
        print(
            f"| {name} | {r['peft']} | {med['softprompt']:.1f} s / {med['peft']:.1f} s | "
            f"**{r['step_time_ratio_peft_over_softprompt']:.2f}x**; "
            f"{r['step_ratio_per_pair']:.2f}x | "
            f"{act['softprompt']:.0f} / {act['peft']:.0f} MB | "
            f"{rss['softprompt']:.0f} / {rss['peft']:.0f} MB | {acc} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=sorted(METHODS))
    parser.add_argument("--table", action="store_true", help="print the recorded results")
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-examples", type=int, default=200, help="test rows per task")
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--child", choices=["softprompt", "peft"])
    parser.add_argument("--out", default="benchmarks/results/peft_methods.json")
    args = parser.parse_args()
    if args.table:
        return table(Path(args.out))
    if not args.method:
        parser.error("--method is required (or --table)")
    if args.child:
        return child(args.method, args.child, args.backbone, args.memory_steps)
    result = run(args)
    path = Path(args.out)
    everything = json.loads(path.read_text()) if path.exists() else {}
    everything[args.method] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(everything, indent=2))
    tmp.replace(path)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
