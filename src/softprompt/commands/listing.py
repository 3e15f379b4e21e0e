"""datasets, backbones and methods: what is built in or registered, as tables."""

from __future__ import annotations

import argparse
from typing import Any


def add_listing_parsers(sub: Any) -> None:
    """`softprompt datasets | backbones | methods`: no flags."""
    for name, func, text in [
        ("datasets", cmd_datasets, "built-in datasets and whether they are installed"),
        ("backbones", cmd_backbones, "built-in backbones and whether they are installed"),
        ("methods", cmd_methods, "registered prompt methods and when to pick each"),
    ]:
        sub.add_parser(name, help=text).set_defaults(func=func)


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
