"""`softprompt search`: discrete prompt search, or --project a soft prompt to tokens."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from softprompt.commands.flags import (
    FLAG_DEFAULTS,
    _add_precision_flags,
    _backbone_arg,
    _unescape,
)
from softprompt.validate import load_json_bounded


def add_search_parser(sub: Any) -> None:
    """`softprompt search`."""
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


def cmd_search(args: argparse.Namespace) -> int:
    """Discrete prompt search (softprompt/search/), or --project a soft prompt to tokens."""

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
