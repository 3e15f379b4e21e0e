"""The few-shot recipe commands: `softprompt pet` and `softprompt meta-init`.

PET is several ordinary runs plus a labelling and a distillation, so it takes every
`train` flag (backbone, data, --shots, method, steps, from the one flag table) and adds
its patterns. Meta-init has its own short list: source datasets, the backbone and
Reptile's settings.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from softprompt.commands.flags import (
    FLAG_DEFAULTS,
    _add_run_flags,
    _config_from_args,
    _non_negative_int,
)
from softprompt.errors import ConfigError
from softprompt.validate import load_json_bounded


def _words(raw: str) -> dict[str, list[str]]:
    words = load_json_bounded(raw, "--words")
    if not isinstance(words, dict):
        raise ConfigError('--words: give a JSON object of label words, e.g. {"pos": [" great"]}')
    return words


def add_fewshot_parsers(sub: Any) -> None:
    """Add `pet` and `meta-init`."""
    pet = sub.add_parser(
        "pet", help="PET/iPET: a prompt per pattern on K shots, ensemble labels, distilled prompt"
    )
    pet.add_argument("--config", help="YAML run config (flags override it)")
    pet.add_argument("--pattern", action="append", default=[], metavar="TEMPLATE",
                     help="a template with one {text} slot (repeatable; \\n is a newline)")  # fmt: skip
    pet.add_argument("--words", action="append", default=[], metavar="JSON",
                     help='label words of one verbalizer, {"label": [" word"]} (repeatable; '
                     "default: the dataset's); patterns are every --pattern x every --words")  # fmt: skip
    pet.add_argument(
        "--generations", type=_non_negative_int, default=0, help="iPET generations after the first"
    )
    pet.add_argument("--growth", type=_non_negative_int, default=5,
                     help="iPET: generation g adds growth^g x the shots, soft-labelled")  # fmt: skip
    pet.add_argument("--unlabelled-limit", type=_non_negative_int, default=0,
                     help="label at most N unlabelled texts (0 = all)")  # fmt: skip
    pet.add_argument(
        "--distill-pattern", type=_non_negative_int, default=0, help="pattern the final prompt uses"
    )
    pet.add_argument("--resume", action="store_true", help="continue each stage's checkpoint")
    pet.add_argument("--test-limit", type=_non_negative_int, default=0,
                     help="score a seeded class-stratified sample of N test rows (0 = all)")  # fmt: skip
    _add_run_flags(pet)
    pet.set_defaults(func=cmd_pet)

    meta = sub.add_parser(
        "meta-init", help="meta-learn a soft-prompt init over source tasks (Reptile, MetaPT)"
    )
    meta.add_argument("--sources", required=True,
                      help="source datasets joined by commas, e.g. election-tweets,tweet-sentiment")  # fmt: skip
    meta.add_argument("--backbone", default=FLAG_DEFAULTS["backbone"])
    meta.add_argument("--n-tokens", type=_non_negative_int, default=20, help="virtual tokens")
    meta.add_argument("--outer-steps", type=_non_negative_int, default=100)
    meta.add_argument("--inner-steps", type=_non_negative_int, default=8)
    meta.add_argument("--inner-lr", type=float, default=3e-2)
    meta.add_argument("--meta-lr", type=float, default=1.0, help="Reptile's step, in (0, 1]")
    meta.add_argument("--batch-size", type=_non_negative_int, default=8)
    meta.add_argument("--seed", type=int, default=0)
    meta.add_argument("--device", default="auto")
    meta.add_argument("--out", default="runs/meta-init")
    meta.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.safetensors")
    meta.set_defaults(func=cmd_meta_init)


def cmd_pet(args: argparse.Namespace) -> int:
    from softprompt.recipes.pet import run_pet

    verbalizers = [_words(raw) for raw in args.words] or [None]
    templates = [raw.replace("\\n", "\n") for raw in args.pattern]
    if len(templates) * len(verbalizers) < 2:
        raise ConfigError(
            "--pattern/--words: PET needs at least 2 patterns (templates x label words); "
            "give two --pattern or two --words"
        )
    run = _config_from_args(args)
    run = dataclasses.replace(run, eval=dataclasses.replace(run.eval, test_limit=args.test_limit))
    result = run_pet(
        run,
        templates,
        verbalizers,
        resume=args.resume,
        generations=args.generations,
        growth=args.growth,
        unlabelled_limit=args.unlabelled_limit,
        distill_pattern=args.distill_pattern,
    )
    print()
    print(result.markdown())
    print(f"distilled prompt: {result.distilled}")
    return 0


def cmd_meta_init(args: argparse.Namespace) -> int:
    from softprompt.recipes.meta_init import MetaInitConfig, run_meta_init

    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    config = MetaInitConfig(
        method={"name": "soft-prompt", "n_tokens": args.n_tokens},
        outer_steps=args.outer_steps,
        inner_steps=args.inner_steps,
        inner_lr=args.inner_lr,
        meta_lr=args.meta_lr,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    path = run_meta_init(
        sources, args.backbone, config, args.out, resume=args.resume, device=args.device
    )
    print(f"init prompt: {path}   use it with: --init file --init-file {path}")
    return 0
