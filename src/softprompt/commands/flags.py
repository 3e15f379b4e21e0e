"""What the run commands share: the flag table (one flag per config key), its
defaults for `--help`, and the small argparse helpers every command module uses."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

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
    "quantize": (
        "backbone.quantize",
        str,
        "frozen weights: none, int8 (torchao), nf4 (bitsandbytes)",
    ),
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
    "chat_system": (
        "task.chat_system",
        _unescape,
        "with --chat-template: a system message before the user's (the instruction)",
    ),
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
    "head_lr": (
        "train.head_lr",
        float,
        "peak lr of a task head trained beside a prompt, LoRA or the backbone (default: train.lr)",
    ),
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
        "also train lora and/or full fine-tuning (e.g. lora,full) as report rows (one task)",
    ),
}

# switch -> (dotted config key it sets to True, help): `_add_run_flags` adds each and
# `_values_from_args` reads each, so a switch and its key are written down once
SWITCHES: dict[str, tuple[str, str]] = {
    "bf16": ("train.bf16", "bf16 autocast on CPU"),
    "gradient_checkpointing": (
        "train.gradient_checkpointing",
        "recompute the backbone's layers in the backward pass: less memory, more time",
    ),
    "fsdp": (
        "train.fsdp",
        "under torchrun: shard the frozen backbone's layers over the processes (FSDP)",
    ),
    "overwrite": (
        "train.overwrite",
        "replace the run already in --out (its prompt, checkpoint, metrics)",
    ),
    "chat_template": (
        "task.chat_template",
        "frame the input inside the backbone tokenizer's chat template (instruct backbones)",
    ),
}
# switches one command adds itself (train: --force-resume), read like SWITCHES
_OWN_SWITCHES = {"force_resume": "train.force_resume"}

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


def _add_run_flags(parser: argparse.ArgumentParser, helps: dict[str, str] | None = None) -> None:
    """Every run flag; `helps` replaces a flag's help text where one command reads it
    differently (compare: --lr sets every unit's lr)."""
    for flag, (key, _kind, help_text) in FLAGS.items():
        parser.add_argument(
            f"--{flag.replace('_', '-')}",
            dest=flag,
            type=str,
            default=None,
            help=_run_flag_help(key, (helps or {}).get(flag, help_text)),
        )
    for flag, (key, help_text) in SWITCHES.items():
        parser.add_argument(
            f"--{flag.replace('_', '-')}",
            action="store_true",
            default=None,
            help=f"{help_text} [{key}]",
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
    switches = {flag: key for flag, (key, _) in SWITCHES.items()} | _OWN_SWITCHES
    for flag, key in switches.items():
        if getattr(args, flag, None):
            set_dotted(values, key, True)
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


def _int_list(raw: str, flag: str) -> list[int]:
    from softprompt.errors import ConfigError

    try:
        return [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected whole numbers joined by commas, got {raw!r}") from None


MAX_SEED_COUNT = 100  # a grid of more seeds is a typo for a list ("1000000000" for "1000,")


def seed_list(raw: str) -> list[int]:
    """`--seeds`: a bare number N means seeds 0..N-1 (the common case, "3 seeds"); any
    comma makes it a list, so "5," runs seed 5 alone and "0,4,7" those three. A count is
    bounded so that a seed typed without its comma fails at once instead of building a
    grid of a billion units."""
    from softprompt.errors import ConfigError

    seeds = _int_list(raw, "--seeds")
    if len(seeds) == 1 and "," not in raw:
        if not 1 <= seeds[0] <= MAX_SEED_COUNT:
            raise ConfigError(
                f"--seeds {raw}: a bare number is a count of seeds (1 to {MAX_SEED_COUNT});"
                f" to run seed {seeds[0]} alone, write --seeds {seeds[0]},"
            )
        return list(range(seeds[0]))
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {raw}: expected distinct seeds >= 0, e.g. --seeds 0,4,7")
    return seeds


def lr_pairs(raw: str) -> dict[str, float]:
    """`--lr-for lora=3e-4,prefix-tuning=0.01`: method -> lr (the names are checked
    against the grid's methods by CompareConfig)."""
    from softprompt.errors import ConfigError

    pairs: dict[str, float] = {}
    for part in (p.strip() for p in raw.split(",")):
        name, sep, value = part.partition("=")
        try:
            if not (sep and name.strip()):
                raise ValueError
            pairs[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(
                f"--lr-for: cannot read {part!r}; write method=lr pairs separated by commas, "
                "e.g. lora=3e-4,prefix-tuning=0.01"
            ) from None
    return pairs


def lr_factors(raw: str) -> list[float]:
    """`--lr-grid 0.3,1,3`: factors of each method's lr (checked by CompareConfig)."""
    from softprompt.errors import ConfigError

    try:
        factors = [float(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        factors = []
    if not factors:
        raise ConfigError(
            f"--lr-grid: cannot read {raw!r}; give factors of each method's lr separated "
            "by commas, e.g. 0.3,1,3"
        )
    return factors


def _add_precision_flags(parser: argparse.ArgumentParser) -> None:
    """--dtype / --quantize: how the frozen backbone is held (softprompt.backbones)."""
    parser.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                        help="frozen weights' dtype (auto: float32 on CPU, bf16 on CUDA)")  # fmt: skip
    parser.add_argument("--quantize", default=None, choices=["none", "int8", "nf4"],
                        help="quantize the frozen weights: int8 (torchao) or nf4 (bitsandbytes)")  # fmt: skip


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


def _add_engine_flags(parser: argparse.ArgumentParser, jobs: str) -> None:
    """--engine own|vllm and --vllm-url, for the offline commands that can hand their
    forward passes to a vLLM server (`jobs`: what it takes there)."""
    parser.add_argument("--engine", default="own", choices=["own", "vllm"],
                        help=f"vllm: forward passes by the vLLM at --vllm-url ({jobs})")  # fmt: skip
    parser.add_argument("--vllm-url", default=None, help="vLLM serving the backbone's folder")


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
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(raw: str) -> int:
    """argparse type: a count such as a batch size (argparse turns the error into a usage line)."""
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _batch_size(raw: str) -> int | str:
    """argparse type: a positive count, or "auto"."""
    return "auto" if raw == "auto" else _positive_int(raw)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Defaults in `--help`, also for flags without a help text (argparse prints no help
    line for those, so give them one that is just the default)."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        default = action.default
        trivial = default is None or default is False or default == []
        if action.option_strings and not action.help and not trivial:
            action.help = "(default: %(default)s)"
