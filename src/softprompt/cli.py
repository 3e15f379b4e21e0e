"""The `softprompt` command line.

    softprompt train [--config run.yaml] [--backbone ...] [--dataset ...] [--steps ...]
    softprompt eval PROMPT [--dataset ...] [--split test]
    softprompt predict PROMPT "some text" ...   (or image files, for a vision backbone)
    softprompt info PROMPT
    softprompt compare [--methods zero-shot,soft-prompt,lora] [--seeds 3] [--steps ...]
    softprompt pet --shots 16 --pattern "{text} It was" --pattern "Review: {text}" [--generations N]
    softprompt meta-init --sources election-tweets,tweet-sentiment [--outer-steps ...]
    softprompt datasets | backbones

Errors a user can fix print one line naming the flag or key, and exit 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import select
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from softprompt.errors import SoftPromptError
from softprompt.validate import load_json_bounded

_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def _unescape(raw: str) -> str:
    """`\\n`, `\\t` and `\\\\` typed in a shell flag mean what they mean in YAML: a template
    like "Review: {text}\\nSentiment:" must put a newline there, not a backslash."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], raw)


def _verbalizer_flag(raw: str) -> Any:
    """`--verbalizer`: JSON label words, or auto / auto:N (tasks/auto_verbalizer.py)."""
    return raw.strip() if raw.strip().startswith("auto") else load_json_bounded(raw, "--verbalizer")


# flag -> dotted config key; one table so flags and YAML keys never drift apart
FLAGS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "backbone": ("backbone", str, "built-in name, HF model folder or .gguf file"),
    "backbone_adapter": (
        "backbone.adapter",
        str,
        "PEFT LoRA folder (adapter_model.safetensors) merged into the frozen backbone",
    ),
    "dtype": ("backbone.dtype", str, "frozen weights: auto, float32, bfloat16 or float16"),
    "quantize": ("backbone.quantize", str, "frozen weights: none, int8 (torchao), nf4 (CUDA)"),
    "device_map": ("backbone.device_map", str, "none, or auto: spread over GPUs/CPU/disk"),
    "dataset": ("data.source", str, "built-in name, .csv/.jsonl/.json/.parquet or datasets dir"),
    "text_column": ("data.text_column", str, "text column of a user file"),
    "label_column": ("data.label_column", str, "label (or target text) column of a user file"),
    "task_kind": ("data.task", str, "classification or generation"),
    "validation_file": ("data.validation", str, "separate validation file"),
    "test_file": ("data.test", str, "separate test file"),
    "shots": ("data.shots", int, "k-shot regime: K training + K validation rows per class"),
    "data_seed": ("data.seed", int, "which k-shot sample --shots draws"),
    "method": ("method.name", str, "prompt method (see `softprompt methods`)"),
    "n_tokens": ("method.n_tokens", int, "number of virtual tokens"),
    "init": ("method.init", str, "random, vocab, text, labels or file"),
    "init_file": ("method.init_file", str, "prompt file for --init file"),
    "init_text": ("method.init_text", _unescape, "text for --init text"),
    "template": ("task.template", _unescape, "template with one {text} slot (\\n is a newline)"),
    "verbalizer": (
        "task.verbalizer",
        _verbalizer_flag,
        'JSON: {"label": [" word", ...]}, or auto / auto:N (chosen from the training rows)',
    ),
    "head": ("task.head", str, "auto, verbalizer or linear"),
    "image_size": ("task.image_size", int, "images: square size in pixels (a patch multiple)"),
    "pool": ("task.pool", str, "linear head input: cls, mean (patches/tokens) or last"),
    "lr_scale": (
        "method.lr_scale",
        float,
        "vpt-*, prefix-tuning: prompt lr = lr x this; a task head keeps lr",
    ),
    "steps": ("train.steps", int, "optimizer steps"),
    "batch_size": ("train.batch_size", int, "global batch per micro-step"),
    "grad_accum": ("train.grad_accum", int, "micro-steps per optimizer step"),
    "lr": ("train.lr", float, "peak learning rate"),
    "warmup_steps": ("train.warmup_steps", int, "linear warmup steps"),
    "eval_every": ("train.eval_every", int, "evaluate every N steps"),
    "eval_examples": ("train.eval_examples", int, "validation rows per evaluation (0 = all)"),
    "patience": ("train.patience", int, "stop after N evaluations without improvement (0 = never)"),
    "seed": ("train.seed", int, "random seed"),
    "device": ("train.device", str, "auto, cpu, cuda or mps"),
    "sampler": ("train.sampler", str, "mixing several tasks: proportional or temperature"),
    "temperature": ("train.temperature", float, "p ~ n^(1/T) with --sampler temperature"),
    "out": ("out", str, "output folder"),
    "compare": (
        "compare",
        lambda raw: [part.strip() for part in raw.split(",") if part.strip()],
        "images: also train lora and/or full fine-tuning (e.g. lora,full) as report rows",
    ),
}


# What each run flag defaults to when neither it nor the YAML config sets it: RunConfig()'s
# values (tests/cli/test_help.py checks they agree), kept here so `--help` needs no torch.
# method options other than the name are soft-prompt's; other methods have their own.
FLAG_DEFAULTS: dict[str, Any] = {
    "backbone": "smollm2-135m",
    "data.source": "movie-sentiment",
    "data.text_column": "text",
    "data.label_column": "label",
    "data.task": "classification",
    "data.seed": 0,
    "method.name": "soft-prompt",
    "method.n_tokens": 20,
    "method.init": "vocab",
    "task.head": "auto",
    "task.image_size": 112,
    "task.pool": "auto",
    "train.steps": 160,
    "train.batch_size": 8,
    "train.grad_accum": 1,
    "train.lr": 0.03,
    "train.warmup_steps": 10,
    "train.eval_every": 40,
    "train.eval_examples": 300,
    "train.patience": 0,
    "train.seed": 0,
    "train.device": "auto",
    "train.sampler": "proportional",
    "train.temperature": 2.0,
    "out": "runs/movie-sentiment",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each flag's default where it says something: not for None, False or
    [] (run flags default to None so a YAML config can set them; their help names the
    value RunConfig gives them instead)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        said = "default:" in (action.help or "")  # the help names it already
        if said or default is None or default is False or default == []:
            return action.help
        return super()._get_help_string(action)


def _run_flag_help(key: str, help_text: str) -> str:
    if key not in FLAG_DEFAULTS:
        return f"{help_text} [{key}]"
    default = FLAG_DEFAULTS[key]
    if key.startswith("method.") and key != "method.name":
        return f"{help_text} [{key}; default: {default} with soft-prompt, else the method's]"
    return f"{help_text} [{key}; default: {default}]"


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    for flag, (key, _kind, help_text) in FLAGS.items():
        parser.add_argument(
            f"--{flag.replace('_', '-')}",
            dest=flag,
            type=str,
            default=None,
            help=_run_flag_help(key, help_text),
        )
    parser.add_argument(
        "--bf16", action="store_true", default=None, help="bf16 autocast on CPU [train.bf16]"
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        default=None,
        help="recompute the backbone's layers in the backward pass: less memory, more time "
        "[train.gradient_checkpointing]",
    )
    parser.add_argument(
        "--fsdp",
        action="store_true",
        default=None,
        help="under torchrun: shard the frozen backbone's layers over the processes (FSDP) "
        "[train.fsdp]",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="replace the run already in --out (its prompt, checkpoint, metrics) [train.overwrite]",
    )
    parser.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        default=None,
        help="skip the zero-shot row",
    )


def _config_from_args(args: argparse.Namespace) -> Any:
    from softprompt.config import build_run_config

    return build_run_config(_values_from_args(args))


def _values_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run's config values as given: the YAML file, then the flags over it."""
    from softprompt.config import load_yaml, set_dotted
    from softprompt.errors import ConfigError
    from softprompt.validate import short

    values = load_yaml(args.config) if args.config else {}
    for flag, (key, kind, _) in FLAGS.items():
        raw = getattr(args, flag, None)
        if raw is None:
            continue
        try:
            set_dotted(values, key, kind(raw))
        except (ValueError, RecursionError) as exc:
            raise ConfigError(
                f"--{flag.replace('_', '-')}: cannot read {short(raw)} ({short(str(exc), 80)})"
            ) from None
    for flag in ("bf16", "overwrite", "force_resume", "gradient_checkpointing", "fsdp"):
        if getattr(args, flag, None):
            set_dotted(values, f"train.{flag}", True)
    if args.baseline is False:
        values["baseline"] = False
    if getattr(args, "test_limit", None) is not None and getattr(args, "command", "") == "train":
        set_dotted(values, "eval.test_limit", args.test_limit)
    return values


def _merged(stored: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` over `stored`, mapping by mapping: a flag replaces one stored value."""
    merged = dict(stored)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merged(merged[key], value)
        merged[key] = value
    return merged


def _train_config(args: argparse.Namespace, resume: bool) -> Any:
    """The run's config; with --resume, the run's stored settings (OUT/run.json) under
    what was given, so `--out OUT --resume` alone goes on as the run started (what was
    given is checked against the checkpoint before any model work: recipes/run.py)."""
    from softprompt.config import build_run_config
    from softprompt.train import run_dir

    values = _values_from_args(args)
    config = build_run_config(values)
    stored = run_dir.stored_settings(config.out) if resume else None
    return config if stored is None else build_run_config(_merged(stored, values))


def _print_split_summaries(config: Any) -> None:
    """Rows per split and class, before any model loads: a wrong column shows at once."""
    from softprompt.api import load_data
    from softprompt.data import split_summary

    for spec in config.task_specs():
        title = spec.name if config.tasks else None
        print(split_summary(load_data(spec.data), title), end="\n\n", flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from softprompt.api import run
    from softprompt.recipes.run import check_template_slots
    from softprompt.train import run_dir

    resume = args.resume or args.force_resume
    config = _train_config(args, resume)
    check_template_slots(config.task_specs())  # from the config alone: before the data
    # run() claims --out too (the lock is re-entrant): claiming here first keeps --out
    # problems ahead of reading the data for the summary
    with run_dir.claim(config.out, config.train, resume=resume):
        if not resume and os.environ.get("RANK", "0") == "0":
            _print_split_summaries(config)
        report = run(config, resume=resume)
    if os.environ.get("RANK", "0") != "0":
        return 0
    print()
    written = report.out_dir / "report.md"  # the table and, with --test-limit, rows scored
    text = written.read_text(encoding="utf-8") if written.is_file() else report.markdown()
    print(text.split("\n## ")[0])  # the table and its notes; per-class tables stay in the file
    print(
        f"prompt: {report.result.prompt_path}   curves: {report.out_dir / 'curves.png'}   report: {report.out_dir / 'report.md'}"
    )
    return 0


def _int_list(raw: str, flag: str) -> list[int]:
    from softprompt.errors import ConfigError

    try:
        return [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected whole numbers joined by commas, got {raw!r}") from None


def cmd_compare(args: argparse.Namespace) -> int:
    """Every method x seed on one task at one step budget (recipes/compare.py)."""
    import dataclasses

    from softprompt.config import RunConfig
    from softprompt.errors import ConfigError
    from softprompt.recipes.compare import CompareConfig, compare

    if args.seed is not None:
        raise ConfigError("--seed: compare trains every seed in --seeds; use --seeds")
    run = _config_from_args(args)
    if run.out == RunConfig().out and args.out is None:  # not the train command's folder
        run = dataclasses.replace(run, out=f"runs/compare-{Path(run.data.source).stem}")
    seeds = _int_list(args.seeds, "--seeds")
    seeds = list(range(seeds[0])) if len(seeds) == 1 else seeds  # "3": seeds 0, 1, 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    config = CompareConfig(run=run, methods=methods, seeds=seeds, test_limit=args.test_limit)
    report = compare(config)
    print()
    print(report.markdown())
    out = report.out
    print(f"table: {out / 'compare.md'}   json: {out / 'compare.json'}   plot: {out}/compare.png")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from softprompt.api import load_data
    from softprompt.config import DataConfig
    from softprompt.errors import ConfigError
    from softprompt.evaluate import evaluate, resolve_batch_size
    from softprompt.recipes.baselines import load_model
    from softprompt.recipes.run import SAMPLE, sample_rows

    first = args.prompt[0]
    model = load_model(first, _backbone_arg(args, first))
    meta = _meta(first)
    # default: the data the prompt was trained on (path and columns included)
    trained = dict(meta.get("run", {}).get("data") or {"source": meta.get("dataset")})
    if args.dataset:
        trained = {"source": args.dataset}
    for key in ("text_column", "label_column"):
        if getattr(args, key) is not None:
            trained[key] = getattr(args, key)
    trained["labels"] = list(model.task.config.labels) or None
    if not trained.get("source"):
        raise ConfigError(
            "--dataset: the prompt file does not say what it was trained on; name a dataset"
        )
    source = trained["source"]
    data = load_data(DataConfig(**trained))
    every = data.split(args.split)
    examples = sample_rows(every, args.test_limit or 0, stratify=data.task == "classification")
    if len(args.prompt) > 1:
        if args.batch_size == "auto":
            args.batch_size = resolve_batch_size(model, examples, "auto")
        return _eval_ensemble(args, model, examples, source)
    desc = f"{args.split} {source}"
    result = evaluate(model, examples, batch_size=args.batch_size, progress=True, desc=desc)
    split = {"split": args.split, "split_rows": len(every)}
    if len(examples) < len(every):
        split["sample"] = f"{SAMPLE} of {len(examples)} rows (--test-limit)"
    print(json.dumps({"prompt": str(first), "dataset": source, **split, **result}, indent=2))
    return 0


def _eval_ensemble(args: argparse.Namespace, first: Any, examples: list, source: str) -> int:
    """Several prompt files of one task: each member, their mean-probability ensemble and
    their vote, all scored in one batched forward pass per chunk."""
    from softprompt.ensemble import evaluate_ensemble
    from softprompt.model import PromptModel

    members = [first] + [PromptModel.load(p, first.backbone) for p in args.prompt[1:]]
    result = evaluate_ensemble(members, examples, batch_size=args.batch_size)
    for path, scores in zip(args.prompt, result["members"], strict=True):
        scores["prompt"] = str(path)
    print(json.dumps({"dataset": source, "split": args.split, **result}, indent=2))
    return 0


def _add_precision_flags(parser: argparse.ArgumentParser) -> None:
    """--dtype / --quantize: how the frozen backbone is held (softprompt.backbones)."""
    parser.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                        help="frozen weights' dtype (auto: float32 on CPU, bf16 on CUDA)")  # fmt: skip
    parser.add_argument("--quantize", default=None, choices=["none", "int8", "nf4"],
                        help="quantize the frozen weights: int8 (torchao) or nf4 (CUDA)")  # fmt: skip


def _backbone_arg(args: argparse.Namespace, prompt: str | None = None) -> Any:
    """--backbone as given, or with --dtype/--quantize the backbone loaded that way (named
    by --backbone, else by the prompt file). A prompt loads under any dtype: the fingerprint
    names the source weights."""
    if not (getattr(args, "dtype", None) or getattr(args, "quantize", None)):
        return args.backbone
    from softprompt.backbones import load_backbone

    name = args.backbone or (
        _meta(prompt)["backbone"]["name"] if prompt else FLAG_DEFAULTS["backbone"]
    )
    return load_backbone(name, dtype=args.dtype or "auto", quantize=args.quantize)


def _meta(path: str) -> dict[str, Any]:
    from softprompt.model import load_prompt_meta

    return load_prompt_meta(path)


def cmd_predict(args: argparse.Namespace) -> int:
    if args.task and args.engine == "vllm":
        from softprompt.errors import ConfigError

        raise ConfigError("--engine vllm: predict takes one prompt file, not --task")
    if args.task:
        return _predict_tasks(args)
    from softprompt.errors import ConfigError
    from softprompt.recipes.baselines import load_model

    if args.prompt is None:
        raise ConfigError("predict: give a prompt file (or several with --task NAME=PROMPT)")
    texts = list(args.texts) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise ConfigError("predict: no texts; give them as arguments or one per line on stdin")
    blank = [i for i, text in enumerate(texts, start=1) if not text.strip()]
    if blank:
        raise ConfigError(f"predict: text {blank[0]} is empty; give some text to label")
    if args.engine == "vllm":
        return _predict_on_vllm(args, texts)
    model = load_model(args.prompt, _backbone_arg(args, args.prompt))
    for text, prediction in zip(texts, model.predict(texts), strict=True):
        key = "image" if model.backbone.spec.kind == "vision" else "text"
        print(json.dumps({key: text, **_answer(prediction)}, ensure_ascii=False))
    return 0


def _predict_on_vllm(args: argparse.Namespace, texts: list[str]) -> int:
    """predict --engine vllm: the same lines, the forward passes done by a vLLM server."""
    from softprompt.errors import ConfigError
    from softprompt.serve.vllm import predict

    if not args.vllm_url:
        raise ConfigError("--engine vllm: give --vllm-url URL (a vLLM on the backbone's folder)")
    answers = predict(args.prompt, texts, args.vllm_url, backbone=args.backbone)
    for text, answer in zip(texts, answers, strict=True):
        print(json.dumps({"text": text, **_answer(answer)}, ensure_ascii=False))
    return 0


def _answer(prediction: dict[str, Any]) -> dict[str, Any]:
    """A prediction as printed beside its input: generated text goes under `output`, so
    the input keeps its `text` key (it was overwritten by the output once)."""
    if "text" in prediction:
        prediction["output"] = prediction.pop("text")
    return _rounded(prediction)


def _rounded(prediction: dict[str, Any]) -> dict[str, Any]:
    if "scores" in prediction:  # four decimals: people read these lines
        prediction["scores"] = {k: round(v, 4) for k, v in prediction["scores"].items()}
    return prediction


def _split_pair(raw: str, what: str) -> tuple[str, str]:
    from softprompt.errors import ConfigError

    name, sep, value = raw.partition("=")
    if not sep or not name:
        raise ConfigError(f"{what}: expected NAME=VALUE, got {raw!r}")
    return name, value


def _predict_tasks(args: argparse.Namespace) -> int:
    """Several prompt files on one backbone; inputs TASK=TEXT answered in mixed batches."""
    from softprompt.api import load_prompts

    paths = dict(_split_pair(raw, "--task") for raw in args.task)
    raw = ([args.prompt] if args.prompt else []) + list(args.texts)
    raw = raw or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    pairs = [_split_pair(item, "input") for item in raw]
    model = load_prompts(paths, _backbone_arg(args, next(iter(paths.values()), None)))
    for (task, text), prediction in zip(pairs, model.predict(pairs), strict=True):
        prediction.pop("task")
        print(json.dumps({"task": task, "text": text, **_answer(prediction)}, ensure_ascii=False))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from softprompt.api import export_prompt
    from softprompt.interop.commands import refuse_existing
    from softprompt.train.run_dir import check_out_file

    if args.format == "peft":
        from softprompt.interop.commands import cmd_export_peft

        return cmd_export_peft(args)
    check_out_file(args.out, "--out")  # before the backbone loads
    refuse_existing(Path(args.out), "--out", overwrite=args.overwrite)
    out = export_prompt(args.prompt, args.out, _backbone_arg(args, args.prompt))
    before, after = os.path.getsize(args.prompt), os.path.getsize(out)
    print(f"{out}: {after:,} bytes (was {before:,})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    meta = _meta(args.prompt)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    method, task = meta["method"], meta["task"]
    print(f"file          {args.prompt} ({meta['file_bytes']:,} bytes)")
    print(f"method        {method['name']} {json.dumps(method['options'])}")
    print(
        f"backbone      {meta['backbone']['name']} (fingerprint {meta['backbone']['fingerprint']})"
        + _held_as(meta["backbone"])
    )
    print(f"dataset       {meta.get('dataset')}")
    print(f"task          {task['kind']}, head {task['head']}, template {task['template']!r}")
    print(f"labels        {task['labels']}")
    if task.get("verbalizer"):
        print(f"verbalizer    {json.dumps(task['verbalizer'])}")
    print(f"tensors       {meta['tensors']}")
    print(f"trainable     {meta['trainable_parameters']:,} parameters")
    if meta.get("metrics"):
        print(f"metrics       {json.dumps(meta['metrics'])}")
    return 0


def _held_as(backbone: dict[str, Any]) -> str:
    """The suffix ", trained in bfloat16, int8": how the frozen weights were held (files before
    issue 19 do not say: float32)."""
    held = [backbone.get("dtype", "float32")]
    if backbone.get("quantize", "none") != "none":
        held.append(backbone["quantize"])
    return f", trained in {', '.join(held)}"


def cmd_datasets(args: argparse.Namespace) -> int:
    from softprompt.data import builtin_datasets

    print("| dataset | task | labels | installed | install |\n|---|---|---|---|---|")
    for d in builtin_datasets():
        labels = ", ".join(d.labels[:4]) + (" ..." if len(d.labels) > 4 else "")
        print(
            f"| {d.name} | {d.task} | {labels} | {'yes' if d.installed else 'no'} | `{d.install}` |"
        )
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from softprompt.backbones import builtin_backbones

    print("| backbone | kind | installed | install |\n|---|---|---|---|")
    for b in builtin_backbones():
        print(f"| {b.name} | {b.kind} | {'yes' if b.installed else 'no'} | `{b.install}` |")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """One line per registered method: its name, what it is and when to pick it."""
    from softprompt.methods import METHODS, available_methods

    names = available_methods()
    width = max(map(len, names))
    for name in names:
        summary = getattr(METHODS.builder(name), "summary", "")
        print(f"{name:<{width}}  {summary}".rstrip())
    return 0


def _positive_int(raw: str) -> int:
    """argparse type: a count such as a batch size (argparse turns the error into a usage line)."""
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _batch_size(raw: str) -> int | str:
    """argparse type: a positive count, or "auto"."""
    return "auto" if raw == "auto" else _positive_int(raw)


def cmd_search(args: argparse.Namespace) -> int:
    """Discrete prompt search (softprompt/search/), or --project a soft prompt to tokens."""
    from pathlib import Path

    from softprompt.api import task_config_for
    from softprompt.backbones import load_backbone
    from softprompt.errors import ConfigError
    from softprompt.search import run

    data = run.load_search_data(args.dataset, args.text_column, args.label_column)
    if args.project:
        metrics = ["cosine", "l2"] if args.project_metric == "both" else [args.project_metric]
        backbone = _backbone_arg(args) if args.backbone else None
        out = Path(args.out) if args.out else None
        print(run.run_projection(args.project, backbone, data, metrics=metrics,
                                 examples=args.test_examples, out=out))  # fmt: skip
        return 0
    overrides: dict[str, Any] = {}
    if args.template:
        overrides["template"] = _unescape(args.template)
    if args.verbalizer:
        overrides["verbalizer"] = load_json_bounded(args.verbalizer, "--verbalizer")
    options: dict[str, Any] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--option: expected KEY=VALUE, got {item!r}")
        options[key] = value
    if args.optimizer:
        options["optimizer"] = args.optimizer
    backbone = load_backbone(
        args.backbone or FLAG_DEFAULTS["backbone"],
        dtype=args.dtype or "auto",
        quantize=args.quantize,
        adapter=args.backbone_adapter,
    )
    outcome = run.run_search(
        backbone, data, task_config_for(data, overrides), method=args.method,
        budget=args.budget, seed=args.seed, examples=args.examples,
        test_examples=args.test_examples, top=args.top, options=options,
        out=Path(args.out or "runs/search"),
    )  # fmt: skip
    print()
    print(outcome.markdown())
    print("prompt files: " + "  ".join(str(p) for p in outcome.files))
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    from softprompt.serve.commands import run_store

    return run_store(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from softprompt.serve.commands import run_serve

    return run_serve(args)


def cmd_estimate(args: argparse.Namespace) -> int:
    """Memory for training and serving, and step time, before a run (softprompt/estimate.py)."""
    from softprompt.backbones import load_backbone
    from softprompt.device import resolve_device
    from softprompt.estimate import estimate, rss_bytes

    runtime = rss_bytes() or 0  # before the weights: python, torch, transformers
    device = resolve_device(args.device, "--device")
    backbone = load_backbone(args.backbone, dtype=args.dtype, quantize=args.quantize, device=device)
    backbone.model.to(device)
    options = {"n_tokens": args.n_tokens} if args.n_tokens is not None else None
    result = estimate(backbone, method=args.method, method_options=options,
                      batch_size=args.batch_size, seq_len=args.seq_len, tasks=args.tasks,
                      runtime_bytes=runtime)  # fmt: skip
    print(json.dumps(result.to_dict(), indent=2) if args.json else "\n".join(result.lines()))
    return 0


def _add_test_limit(parser: argparse.ArgumentParser, what: str) -> None:
    """--test-limit N: a fixed sample instead of a full pass (recipes/run.py sample_rows)."""
    parser.add_argument(
        "--test-limit",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help=f"{what}: a seeded class-stratified sample of N rows, the same every time "
        "[eval.test_limit; default: 0 = every row]",
    )


def _non_negative_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = every row), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softprompt", description="Learn tiny prompts for a frozen transformer."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a prompt, report zero-shot vs tuned test scores")
    train.add_argument("--config", help="YAML run config (flags override it)")
    train.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint.safetensors"
    )
    train.add_argument(
        "--force-resume",
        action="store_true",
        help="resume even where the checkpoint's config differs from this one [train.force_resume]",
    )
    _add_run_flags(train)
    _add_test_limit(train, "test rows scored for the report")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser(
        "eval", help="score a prompt file (several: each, and their ensemble) on a dataset split"
    )
    evaluate.add_argument("prompt", nargs="+", help="prompt file(s); several form an ensemble")
    evaluate.add_argument("--backbone", default=None)
    _add_precision_flags(evaluate)
    evaluate.add_argument("--dataset", default=None, help="default: the dataset it was trained on")
    evaluate.add_argument("--split", default="test", choices=["train", "validation", "test"])
    evaluate.add_argument("--text-column", default=None, help="default: as in training")
    evaluate.add_argument("--label-column", default=None, help="default: as in training")
    evaluate.add_argument("--batch-size", type=_batch_size, default=32)
    evaluate.epilog = "--batch-size auto: the largest batch whose forward fits half the free memory"
    _add_test_limit(evaluate, "rows of --split scored")
    evaluate.set_defaults(func=cmd_eval)

    predict = sub.add_parser("predict", help="label texts (or generate) with a prompt file")
    predict.add_argument("prompt", nargs="?", help="prompt file (not with --task)")
    predict.add_argument(
        "texts",
        nargs="*",
        help="texts or image files, or TASK=TEXT with --task (default: lines on stdin)",
    )
    predict.add_argument("--backbone", default=None)
    _add_precision_flags(predict)
    predict.add_argument(
        "--task",
        action="append",
        metavar="NAME=PROMPT",
        help="serve several tasks at once: a task name and its prompt file (repeatable)",
    )
    predict.add_argument("--engine", default="own", choices=["own", "vllm"],
                         help="vllm: forward passes by the vLLM at --vllm-url (large jobs)")  # fmt: skip
    predict.add_argument("--vllm-url", default=None, help="vLLM serving the backbone's folder")
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser(
        "export", help="write a prompt without its training-only encoder/MLP (same scores)"
    )
    export.add_argument("prompt")
    export.add_argument("--out", required=True, help="where to write the flat prompt file")
    export.add_argument("--backbone", default=None)
    _add_precision_flags(export)
    export.add_argument("--format", default="softprompt", choices=["softprompt", "peft"],
                        help="peft: a PEFT adapter folder at --out (PeftModel.from_pretrained)")  # fmt: skip
    export.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out file (peft: write into a non-empty folder)")  # fmt: skip
    export.set_defaults(func=cmd_export)

    info = sub.add_parser("info", help="show what a prompt file holds")
    info.add_argument("prompt")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    found = sub.add_parser("search", help="search discrete prompts; --project a soft prompt")
    found.add_argument("--dataset", default="movie-sentiment", help="built-in name or data path")
    found.add_argument("--backbone", default=None, help=f"default {FLAG_DEFAULTS['backbone']}")
    found.add_argument("--backbone-adapter", default=None,
                       help="PEFT LoRA folder merged into the backbone")  # fmt: skip
    _add_precision_flags(found)
    found.add_argument("--method", default="greedy-edit",
                       help="autoprompt, opro, rlprompt, random-edit or greedy-edit")  # fmt: skip
    found.add_argument("--budget", type=int, default=50, help="candidate evaluations")
    found.add_argument("--seed", type=int, default=0)
    found.add_argument("--examples", type=int, default=64, help="validation rows scored (0 = all)")
    found.add_argument("--test-examples", type=int, default=0, help="test rows scored (0 = all)")
    found.add_argument("--top", type=int, default=3, help="best prompts scored and saved")
    found.add_argument("--template", default=None, help="seed template with one {text} slot")
    found.add_argument("--verbalizer", default=None, help='JSON: {"label": [" word"]}')
    found.add_argument("--text-column", default=None)
    found.add_argument("--label-column", default=None)
    found.add_argument("--option", action="append", default=[], help="method option KEY=VALUE")
    found.add_argument("--optimizer", default=None, help="opro: backbone name or OpenAI URL")
    found.add_argument("--project", default=None, help="project this soft prompt file to tokens")
    found.add_argument("--project-metric", default="both", choices=["cosine", "l2", "both"])
    found.add_argument("--out", default=None, help="folder for prompt files (runs/search)")
    found.set_defaults(func=cmd_search)

    plan = sub.add_parser(
        "estimate", help="expected peak memory (training, serving K tasks) and step time"
    )
    plan.add_argument("--backbone", default=FLAG_DEFAULTS["backbone"])
    plan.add_argument("--method", default="soft-prompt")
    plan.add_argument("--n-tokens", type=_positive_int, default=None, help="virtual tokens")
    plan.add_argument("--batch-size", type=_positive_int, default=8)
    plan.add_argument("--seq-len", type=_positive_int, default=128, help="text tokens a row")
    plan.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    plan.add_argument("--quantize", default=None, help="int8 or nf4")
    plan.add_argument("--tasks", type=_positive_int, default=1, help="tasks served at once")
    plan.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(func=cmd_estimate)

    grid = sub.add_parser(
        "compare", help="zero-shot, head-only, prompts, LoRA, full fine-tuning: one table"
    )
    grid.add_argument("--config", help="YAML run config (flags override it)")
    grid.add_argument("--methods", default="zero-shot,head-only,soft-prompt,prefix-tuning,"
                      "p-tuning,lora,full", help="units: these and any registered method")  # fmt: skip
    grid.add_argument("--seeds", default="3", help="N seeds (0..N-1) or a list such as 0,4,7")
    grid.add_argument("--test-limit", type=int, default=0,
                      help="score a fixed sample of this many test rows (0 = all)")  # fmt: skip
    _add_run_flags(grid)
    grid.set_defaults(func=cmd_compare, resume=False, force_resume=False)

    from softprompt.serve.commands import add_serve_parser, add_store_parser

    add_store_parser(sub).set_defaults(func=cmd_store)
    add_serve_parser(sub).set_defaults(func=cmd_serve)
    from softprompt.interop.commands import add_import_peft_parser

    add_import_peft_parser(sub)
    from softprompt.recipes.fewshot_commands import add_fewshot_parsers

    add_fewshot_parsers(sub, _add_run_flags, _config_from_args)  # pet, meta-init

    for name, func, text in [
        ("datasets", cmd_datasets, "built-in datasets and whether they are installed"),
        ("backbones", cmd_backbones, "built-in backbones and whether they are installed"),
        ("methods", cmd_methods, "registered prompt methods and when to pick each"),
    ]:
        sub.add_parser(name, help=text).set_defaults(func=func)
    for command in (parser, *sub.choices.values()):  # serve/store/import-peft parsers too
        _show_defaults(command)
    return parser


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Defaults in `--help`, also for flags without a help text (argparse prints no help
    line for those, so give them one that is just the default)."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        default = action.default
        trivial = default is None or default is False or default == []
        if action.option_strings and not action.help and not trivial:
            action.help = "(default: %(default)s)"


def _fail(command: str, message: str) -> int:
    """One line on stderr, exit status 2: a message may quote a multi-line parser error."""
    print(f"softprompt {command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


_OS_HINTS = {
    errno.ENOSPC: "free some disk space or write elsewhere",
    errno.EDQUOT: "free some of your disk quota or write elsewhere",
    errno.EACCES: "fix the permissions or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
}


def _os_message(exc: OSError) -> str:
    """The file, what the OS said, and what to do where that is known."""
    said = f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    hint = _OS_HINTS.get(exc.errno) if exc.errno is not None else None
    return f"{said}; {hint}" if hint else said


# commands that never load a backbone: they skip importing transformers (about 2 s)
NO_MODEL_COMMANDS = frozenset({"info", "store", "datasets", "backbones", "methods"})


def _quiet_weight_loading() -> None:
    """No transformers bars while weights load ("Loading weights", checkpoint shards): a
    second's bar above the CLI's own lines says nothing. Set here, in the CLI entry only,
    so library users keep transformers' settings; Hub download bars stay (downloads take
    minutes) unless the user turned them off."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    downloads_shown = not hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    if downloads_shown:
        hub_utils.enable_progress_bars()


def _stdout_closed() -> bool:
    """Whether stdout's reader is gone (`softprompt ... | head`); if so, point stdout at
    devnull, as Python's docs advise, so the exit flush raises no second BrokenPipeError.
    A pipe whose reader left polls as an error; a broken socket (the client) does not."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # replaced by a non-file object: not a pipe of ours
        return False
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if not any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
            return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    return True


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `kill`) raised as an interrupt, so training stops the
    way Ctrl-C stops it: temp files removed, the run's lock released, what was kept said."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def _catch_sigterm() -> Any:
    """Route SIGTERM to `Terminated`; returns the handler to restore (None: not installed,
    as outside the main thread, where Python allows no handler)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    return signal.SIG_DFL if previous is None else previous


def _kept(args: argparse.Namespace) -> str:
    """What an interrupted `train` left in its folder, from the files that exist (a run
    stopped before its first evaluation has written none)."""
    if args.command != "train":
        return ""
    try:
        out = Path(_config_from_args(args).out)
    except (SoftPromptError, OSError, ValueError):
        return ""
    prompts = [out / "prompt.safetensors", *sorted(out.glob("*/prompt.safetensors"))]
    kept = [f"{p} (best prompt so far)" for p in prompts if p.is_file()]
    if (out / "checkpoint.safetensors").is_file():
        kept.append(f"{out / 'checkpoint.safetensors'} (last checkpoint; add --resume to go on)")
    return f"; kept: {', '.join(kept)}" if kept else f"; nothing was written to {out} yet"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in NO_MODEL_COMMANDS:
        _quiet_weight_loading()
    previous = _catch_sigterm() if args.command in ("train", "compare") else None
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe (`| head`) fails here, not at interpreter exit
        return code
    except SoftPromptError as exc:
        return _fail(args.command, str(exc))
    except BrokenPipeError as exc:
        if not _stdout_closed():
            return _fail(args.command, _os_message(exc))
        return 141  # 128 + SIGPIPE, quietly: the reader took what it wanted
    except OSError as exc:  # a disk full, a folder that vanished: the OS said why
        return _fail(args.command, _os_message(exc))
    except KeyboardInterrupt as exc:
        stopped = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"softprompt {args.command}: {stopped}{_kept(args)}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
