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
import os
import select
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from softprompt.commands.fewshot import add_fewshot_parsers
from softprompt.commands.flags import FLAG_DEFAULTS as FLAG_DEFAULTS
from softprompt.commands.flags import FLAGS as FLAGS
from softprompt.commands.flags import _config_from_args as _config_from_args
from softprompt.commands.flags import _show_defaults
from softprompt.commands.listing import add_listing_parsers
from softprompt.commands.prompts import (
    add_export_parser,
    add_info_parser,
    add_predict_parser,
    cmd_serve,
    cmd_store,
)
from softprompt.commands.run import (
    add_compare_parser,
    add_estimate_parser,
    add_eval_parser,
    add_train_parser,
)
from softprompt.commands.search import add_search_parser
from softprompt.errors import SoftPromptError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softprompt", description="Learn tiny prompts for a frozen transformer."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_eval_parser(sub)
    add_predict_parser(sub)
    add_export_parser(sub)
    add_info_parser(sub)
    add_search_parser(sub)
    add_estimate_parser(sub)
    add_compare_parser(sub)
    from softprompt.serve.commands import add_serve_parser, add_store_parser

    add_store_parser(sub).set_defaults(func=cmd_store)
    add_serve_parser(sub).set_defaults(func=cmd_serve)
    from softprompt.interop.commands import add_import_peft_parser

    add_import_peft_parser(sub)
    add_fewshot_parsers(sub)  # pet, meta-init

    add_listing_parsers(sub)
    for command in (parser, *sub.choices.values()):  # serve/store/import-peft parsers too
        _show_defaults(command)
    return parser


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
