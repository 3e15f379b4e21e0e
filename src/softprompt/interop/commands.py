"""The PEFT commands: `softprompt export --format peft` and `softprompt import-peft`,
and the rule every export shares: an existing `--out` is replaced only with `--overwrite`
(a silent replace once destroyed a run's checkpoint)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from softprompt.errors import ConfigError
from softprompt.validate import load_json_bounded


def add_import_peft_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "import-peft", help="turn a PEFT prompt adapter folder into a prompt file (same logits)"
    )
    parser.add_argument(
        "adapter", help="folder with adapter_config.json + adapter_model.safetensors"
    )
    parser.add_argument("--backbone", required=True, help="the adapter's base model (name or path)")
    parser.add_argument("--out", required=True, help="the prompt file to write")
    parser.add_argument("--task-id", type=int, default=None, help="multitask adapters: which task")
    parser.add_argument(
        "--task",
        default=None,
        help='task framing as JSON, e.g. \'{"labels": ["neg", "pos"], "template": "{text} :"}\' '
        "(default: the exporter's, else generation with template {text})",
    )
    parser.add_argument(
        "--trust-base",
        action="store_true",
        help="accept an adapter whose base model has another name (same weights)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=cmd_import_peft)
    return parser


def cmd_import_peft(args: argparse.Namespace) -> int:
    from softprompt import backbones  # load_backbone looked up here: tests stand in for it
    from softprompt.interop.peft_import import import_peft, read_adapter
    from softprompt.train.run_dir import check_out_file

    check_out_file(args.out, "--out")
    refuse_existing(Path(args.out), "--out", overwrite=args.overwrite)
    task = load_json_bounded(args.task, "--task") if args.task else None  # flags first
    if task is not None and not isinstance(task, dict):
        raise ConfigError("--task: give a JSON object of task fields")
    config, _ = read_adapter(Path(args.adapter))  # a bad folder is named before the model loads
    out = import_peft(
        args.adapter,
        backbones.load_backbone(args.backbone),
        args.out,
        task_id=args.task_id,
        task=task,
        trust_base=args.trust_base,
    )
    print(f"{out}: prompt file from PEFT {config['peft_type']} adapter {args.adapter}")
    return 0


def cmd_export_peft(args: argparse.Namespace) -> int:
    from softprompt.interop.peft import CONFIG, WEIGHTS, export_peft

    out = check_adapter_out(Path(args.out), overwrite=getattr(args, "overwrite", False))
    folder = export_peft(args.prompt, out, args.backbone)
    kind = json.loads((folder / CONFIG).read_text(encoding="utf-8"))["peft_type"]
    size = (folder / WEIGHTS).stat().st_size
    print(f"{folder}: PEFT {kind} adapter ({WEIGHTS} {size:,} bytes)")
    return 0


def check_adapter_out(out: Path, *, overwrite: bool) -> Path:
    """An adapter folder is written only where it replaces nothing unasked."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; --format peft writes a folder")
    if out.is_dir() and not overwrite:
        entries = sorted(entry.name for entry in out.iterdir())
        if entries:
            raise ConfigError(
                f"--out {out}: the folder is not empty (holds {_few(entries)}); pass "
                "--overwrite to write the adapter's files into it (nothing else there is "
                "touched), or choose a new folder"
            )
    return out


def refuse_existing(path: Path, flag: str, *, overwrite: bool) -> None:
    """An export never replaces a file unasked: `path` may be a run's checkpoint or the
    only copy of another prompt. A dangling symlink counts as existing (a replace would
    swap the link itself)."""
    if overwrite or not os.path.lexists(path):
        return
    raise ConfigError(
        f"{flag} {path}: already exists; pass --overwrite to replace it, or choose another path"
    )


def _few(names: list[str], shown: int = 3) -> str:
    """A folder's entries for a message: the first few, and how many more."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")
