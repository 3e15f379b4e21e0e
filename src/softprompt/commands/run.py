"""train, eval, compare and estimate: the commands that train or score a prompt."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from softprompt.commands.flags import (
    FLAG_DEFAULTS,
    _add_engine_flags,
    _add_precision_flags,
    _add_run_flags,
    _add_test_limit,
    _backbone_arg,
    _batch_size,
    _merged,
    _meta,
    _positive_int,
    _values_from_args,
    lr_factors,
    lr_pairs,
    seed_list,
)


def add_train_parser(sub: Any) -> None:
    """`softprompt train`."""
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


def add_eval_parser(sub: Any) -> None:
    """`softprompt eval`."""
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
    _add_engine_flags(evaluate, "classification")
    evaluate.set_defaults(func=cmd_eval)


def add_estimate_parser(sub: Any) -> None:
    """`softprompt estimate`."""
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


def add_compare_parser(sub: Any) -> None:
    """`softprompt compare`."""
    grid = sub.add_parser(
        "compare", help="zero-shot, head-only, prompts, LoRA, full fine-tuning: one table"
    )
    grid.add_argument("--config", help="YAML run config (flags override it)")
    grid.add_argument("--methods", default="zero-shot,head-only,soft-prompt,prefix-tuning,"
                      "p-tuning,lora,full", help="units: these and any registered method")  # fmt: skip
    grid.add_argument(
        "--seeds",
        default="3",
        help="N seeds (0..N-1) or a list such as 0,4,7 (one seed alone: 5,); with --shots each seed "
        "also draws its own K-shot sample",
    )
    grid.add_argument("--test-limit", type=int, default=0,
                      help="score a fixed sample of this many test rows (0 = all); "
                      "generation: this many distinct inputs, each with all its "
                      "references")  # fmt: skip
    grid.add_argument(
        "--seed-init",
        action="store_true",
        help="each unit's seed also seeds its initialization (the prompt's method.seed, "
        "LoRA's random matrices), not only the data order",
    )
    grid.add_argument(
        "--lr-for",
        default=None,
        help="one method's own lr, e.g. lora=3e-4,prefix-tuning=0.01 (over --lr and the "
        "method's recommended lr)",
    )
    grid.add_argument(
        "--lr-grid",
        default=None,
        help="factors such as 0.3,1,3: train each method at the first seed at its lr x each "
        "factor, keep the lr with the best validation score for every seed",
    )
    lr_help = (
        "one learning rate for every unit; without it (and without train.lr in --config) "
        "each method trains at its own recommended lr, shown in the table"
    )
    _add_run_flags(grid, helps={"lr": lr_help})
    grid.set_defaults(func=cmd_compare, resume=False, force_resume=False)


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


def cmd_compare(args: argparse.Namespace) -> int:
    """Every method x seed on one task at one step budget (recipes/compare.py)."""
    import dataclasses

    from softprompt.config import RunConfig, build_run_config
    from softprompt.errors import ConfigError
    from softprompt.recipes.compare import CompareConfig, compare

    if args.seed is not None:
        raise ConfigError("--seed: compare trains every seed in --seeds; use --seeds")
    values = _values_from_args(args)
    shared_lr = "lr" in values.get("train", {})  # --lr, or train.lr in --config: every unit
    run = build_run_config(values)
    if run.out == RunConfig().out and args.out is None:  # not the train command's folder
        run = dataclasses.replace(run, out=f"runs/compare-{Path(run.data.source).stem}")
    seeds = seed_list(args.seeds)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    config = CompareConfig(
        run=run,
        methods=methods,
        seeds=seeds,
        test_limit=args.test_limit,
        seed_init=args.seed_init,
        per_method_lr=not shared_lr,
        lr_for=lr_pairs(args.lr_for) if args.lr_for else {},
        lr_grid=lr_factors(args.lr_grid) if args.lr_grid is not None else [],
    )
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
    from softprompt.serve.vllm_eval import evaluate_model_on_vllm

    _check_engine_flags(args)
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
    if args.engine == "vllm":
        result = evaluate_model_on_vllm(model, examples, args.vllm_url)
    else:
        result = evaluate(
            model, examples, batch_size=args.batch_size, progress=True, desc=desc, decode=True
        )
    split = {"split": args.split, "split_rows": len(every)}
    if len(examples) < len(every):
        split["sample"] = f"{SAMPLE} of {len(examples)} rows (--test-limit)"
    print(json.dumps({"prompt": str(first), "dataset": source, **split, **result}, indent=2))
    return 0


def _check_engine_flags(args: argparse.Namespace) -> None:
    """eval --engine vllm: one prompt file and a URL, refused before any model is loaded."""
    from softprompt.errors import ConfigError

    if args.engine != "vllm":
        return
    if not args.vllm_url:
        raise ConfigError("--engine vllm: give --vllm-url URL (a vLLM on the backbone's folder)")
    if len(args.prompt) > 1:
        raise ConfigError(
            "--engine vllm: eval takes one prompt file; ensembles run on the own engine"
        )


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
