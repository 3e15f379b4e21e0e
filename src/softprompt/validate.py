"""Type checks for config sections and prompt-file metadata, driven by dataclass fields.

YAML gives whatever the user typed (`steps: 2.5`, `n_tokens: ten`, `source: 5`, a
list where a word belongs), and a prompt file's header is whatever its bytes say;
either used as is ends in a TypeError deep in torch. Every value is checked against
the field's annotation here, first, so the message names the key and what it expects.
All problems of a section are gathered, so a user fixes a config in one pass.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from typing import Any, Union

from softprompt.errors import ConfigError

# Values past these bounds only ever come from typos, and would allocate or loop for
# hours before failing; every section is checked against the entry for its key name. A
# config class may carry its own as `BOUNDS` (field -> (low, high)): a method's options
# are bounded by its config class, wherever the options sit (method, tasks[i].method, a
# prompt file's header), so a new method adds no entry here.
LIMITS: dict[str, tuple[int, int]] = {
    "task.max_text_tokens": (1, 1_000_000),
    "task.max_new_tokens": (1, 4096),
    "train.steps": (1, 10**9),
    "train.batch_size": (1, 10**6),
    "train.grad_accum": (1, 10**6),
    "train.warmup_steps": (0, 10**9),
    "train.eval_every": (1, 10**9),
    "train.eval_examples": (0, 10**9),
    "train.eval_batch_size": (1, 10**6),
    "train.patience": (0, 10**9),
    "train.seed": (0, 2**63 - 1),
}


class Invalid(Exception):
    """One bad value; gathered by the callers into a single error."""


def short(value: Any, limit: int = 60) -> str:
    """repr() cut to one short line: a pasted 100 KB value must not flood the terminal."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    if origin is list:
        item = typing.get_args(hint)[0]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(item) or describe(item)}"
    if origin is dict:
        key, value = typing.get_args(hint)
        return f"a mapping of {describe(key)} to {describe(value)}"
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "bool (true or false)",
    }.get(hint, getattr(hint, "__name__", str(hint)))


def coerce(value: Any, hint: Any) -> Any:
    """`value` as the type `hint` names; strings (from flags) are parsed. Raises Invalid."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, typing.get_args(hint), hint)
    if origin is list:
        if not isinstance(value, list):
            raise Invalid(f"expected {describe(hint)}, got {short(value)}")
        return [coerce(item, typing.get_args(hint)[0]) for item in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise Invalid(f"expected {describe(hint)}, got {short(value)}")
        key_hint, value_hint = typing.get_args(hint)
        return {coerce(k, key_hint): coerce(v, value_hint) for k, v in value.items()}
    scalar = _SCALARS.get(hint)
    if scalar is None:
        return value
    return scalar(value)


def _coerce_union(value: Any, args: tuple[Any, ...], hint: Any) -> Any:
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(value, arg)
        except Invalid:
            pass
    raise Invalid(f"expected {describe(hint)}, got {short(value)}")


def _to_int(value: Any) -> int:
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise Invalid(f"expected an integer, got {short(value)}")


def _to_float(value: Any) -> float:
    number = None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    if number is None:
        raise Invalid(f"expected a number, got {short(value)}")
    if not math.isfinite(number):
        raise Invalid(f"expected a finite number, got {short(value)}")
    return number


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise Invalid(f"expected a string, got {short(value)} (quote it in YAML)")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if value.strip().lower() in ("0", "false", "no", "off"):
            return False
    raise Invalid(f"expected bool (true or false), got {short(value)}")


_SCALARS = {int: _to_int, float: _to_float, str: _to_str, bool: _to_bool}


@dataclasses.dataclass
class Checked:
    """What `check_fields` found: coerced values, unknown dotted keys, other problems."""

    values: dict[str, Any]
    unknown: list[str]
    problems: list[str]
    known: list[str]


def check_fields(
    section: str, cls: type, values: Any, hints: dict[str, Any] | None = None
) -> Checked:
    """Check `values` against dataclass `cls`; unknown keys are named with the section
    (e.g. `train.stpes`), every other problem names its key and what it expects."""
    known = [f.name for f in dataclasses.fields(cls)]
    bounds = getattr(cls, "BOUNDS", {})
    if not isinstance(values, dict):
        problem = f"{section}: expected a mapping of options, got {short(values)}"
        return Checked({}, [], [problem], known)
    hints = {**typing.get_type_hints(cls), **(hints or {})}
    unknown = [f"{section}.{key}" for key in sorted(map(str, values)) if key not in known]
    problems: list[str] = []
    typed: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            continue
        try:
            where = f"{section}.{key}"
            typed[key] = in_limits(where, coerce(value, hints[key]), bounds.get(key))
        except Invalid as exc:
            problems.append(f"{section}.{key}: {exc}")
    return Checked(typed, unknown, problems, known)


def in_limits(where: str, value: Any, bounds: tuple[int, int] | None = None) -> Any:
    """`value` if it is not an integer outside `bounds` (default: LIMITS[where])."""
    bounds = bounds or LIMITS.get(where)
    if bounds and isinstance(value, int) and not bounds[0] <= value <= bounds[1]:
        raise Invalid(f"must be between {bounds[0]} and {bounds[1]}, got {value}")
    return value


# -- bounded input --------------------------------------------------------------------

# A config's or a flag's JSON is a few kilobytes with a handful of levels; these bounds sit
# far above that and far below what exhausts the stack (RecursionError) or the memory.
MAX_JSON_DEPTH = 32
MAX_JSON_CHARS = 1_000_000
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 1_000_000  # lists, mappings and 64-char pieces of text, aliases expanded

_JSON_SYNTAX = re.compile(r'[\[\]{}"\\]')


def json_depth(text: str) -> int:
    """How deep `text`'s arrays and objects nest, brackets inside strings not counted.
    One pass over the brackets, quotes and backslashes, without recursion or
    backtracking, so any input (even a million unclosed quotes) is measured in linear time."""
    depth = deepest = 0
    in_string, escaped_at = False, -1
    for match in _JSON_SYNTAX.finditer(text):
        at, char = match.start(), match.group()
        if at == escaped_at:
            continue
        if in_string:
            if char == "\\":
                escaped_at = at + 1
            in_string = char != '"'
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def load_json_bounded(
    text: str, what: str, *, max_depth: int = MAX_JSON_DEPTH, max_chars: int = MAX_JSON_CHARS
) -> Any:
    """`json.loads` for text a user or a file supplies (`what` names the flag or file).

    Deep nesting makes the json module raise RecursionError and a huge text is parsed in
    full before anything looks at it; both are refused first, in one ConfigError line."""
    if len(text) > max_chars:
        raise ConfigError(
            f"{what}: {len(text):,} characters of JSON (at most {max_chars:,}); give a "
            "short JSON value"
        )
    depth = json_depth(text)
    if depth > max_depth:
        raise ConfigError(
            f"{what}: JSON nested {depth} levels deep (at most {max_depth}); give a flat "
            'value such as {"label": [" word"]}'
        )
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{what}: not valid JSON ({short(str(exc), 80)})") from None


def check_expanded_size(value: Any, what: str, limit: int = MAX_CONFIG_NODES) -> None:
    """Refuse a value whose lists and mappings, with shared parts counted each time they
    are used, exceed `limit` nodes (texts count one per 64 characters).

    YAML anchors and aliases share one object many times over: nine levels of nine
    aliases load in microseconds as a billion-node tree that every later walk (type
    checks, copies, tokenizing) expands. Each distinct object is sized once here, without
    recursion, so the check itself stays cheap; a value that contains itself is refused."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = 1 + sum(_size(child, sizes) for child in _children(node))
            if sizes[key] > limit:
                raise ConfigError(
                    f"{what}: expands to more than {limit:,} values (YAML aliases are "
                    "counted each time they are used); write the values out, or share less"
                )
        elif key not in sizes:
            if key in on_path:
                raise ConfigError(
                    f"{what}: a value contains itself (a YAML alias to its own anchor)"
                )
            on_path.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node) if isinstance(c, dict | list))


def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [*node.keys(), *node.values()]
    return list(node) if isinstance(node, list) else []


def _size(node: Any, sizes: dict[int, int]) -> int:
    if isinstance(node, dict | list):
        return sizes[id(node)]
    return 1 + len(node) // 64 if isinstance(node, str) else 1


# a learned table of absolute positions; RoPE and relative schemes have no hard limit
_POSITION_TABLES = ("position_embeddings", "wpe", "embed_positions")


def position_limit(model: Any) -> int | None:
    """How many positions a backbone's learned position table holds (BERT, GPT-2, OPT),
    or None when positions are rotary or relative and the model has no hard limit.
    A position past the table is an IndexError deep in the forward pass."""
    for name, module in model.named_modules():
        if name.rpartition(".")[2] in _POSITION_TABLES and hasattr(module, "num_embeddings"):
            return int(module.num_embeddings) - int(getattr(module, "offset", 0))
    return None


def check_positions(
    backbone: str, limit: int | None, parts: dict[str, int], *, chat: bool = False
) -> None:
    """Refuse a prompt and template that, with the longest text the task keeps, need
    more positions than the backbone has; `parts` names what takes how many. `chat`: the
    row is wrapped in a chat template, whose system message is one more thing to cut."""
    total = sum(parts.values())
    if limit is None or total <= limit:
        return
    detail = " + ".join(f"{count} {what}" for what, count in parts.items() if count)
    system = ", shorten task.chat_system (--chat-system)" if chat else ""
    raise ConfigError(
        f"{backbone} has {limit} positions but a row can need {total} ({detail}); lower "
        f"method.n_tokens (--n-tokens), shorten task.template{system}, or lower "
        "task.max_text_tokens"
    )
