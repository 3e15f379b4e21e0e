"""Reading the user's own CSV / JSON Lines files.

Files are small, so each is read whole; every problem is reported with the file,
the line and the column or key, plus what to change, because users fix their data
from the error message alone.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.errors import DataError

SUPPORTED_EXTENSIONS = (".csv", ".jsonl", ".json")
COLUMN_FLAGS = {"text": "--text-column", "label": "--label-column"}


@dataclass(frozen=True)
class Row:
    """A raw row with its 1-based line number, kept so later checks can point at it."""

    line: int
    text: str
    label: str


@dataclass(frozen=True)
class Columns:
    """Which column holds the text and which the label, as named by the user."""

    text: str = "text"
    label: str = "label"


def read_rows(path: str | Path, columns: Columns) -> list[Row]:
    """Read every row of a .csv / .jsonl / .json (JSON Lines) file, checking as it goes."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise DataError(
            f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)} "
            "(CSV with a header row, or JSON Lines: one object per line)"
        )
    text = read_text(path)
    rows = _read_csv(path, text, columns) if suffix == ".csv" else _read_jsonl(path, text, columns)
    if not rows:
        raise DataError(f"{path}: no data rows (only a header or blank lines); add some rows")
    return rows


def read_text(path: Path) -> str:
    """Decode as UTF-8 (a BOM is fine) and point at the first undecodable line."""
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path (relative to {Path.cwd()})")
    if not path.is_file():
        raise DataError(f"{path}: is not a file; give the path of a .csv or .jsonl file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: file is empty; add data rows (a CSV also needs its header row)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(
            f"{path}: line {line}, byte {column}: not valid UTF-8 "
            f"(byte 0x{raw[err.start]:02x}); re-save the file as UTF-8"
        ) from None


def _missing_column(path: Path, role: str, name: str, present: list[str], where: str) -> DataError:
    flag = COLUMN_FLAGS[role]
    listing = ", ".join(repr(c) for c in present) or "(none)"
    return DataError(
        f"{path}: {where}no {role} column {name!r}; columns present: {listing}. "
        f"Set {flag} to the column that holds the {role}"
    )


def _read_csv(path: Path, text: str, columns: Columns) -> list[Row]:
    # the csv module refuses fields over 131,072 characters by default; no field can be
    # longer than the file, and a long review is data, not an error
    csv.field_size_limit(max(csv.field_size_limit(), min(len(text) + 1, 2**31 - 1)))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return _csv_rows(path, reader, columns)
    except csv.Error as err:
        raise DataError(
            f"{path}: line {reader.line_num}: not valid CSV ({err}); check quoting on that line"
        ) from None


def _csv_rows(path: Path, reader: Any, columns: Columns) -> list[Row]:
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise DataError(f"{path}: line 1: no header row; the first line must name the columns")
    header = [h.strip() for h in header]
    for role, name in (("text", columns.text), ("label", columns.label)):
        if name not in header:
            raise _missing_column(path, role, name, header, "line 1: ")
    text_at, label_at = header.index(columns.text), header.index(columns.label)
    rows: list[Row] = []
    start = reader.line_num + 1
    for record in reader:
        if any(field.strip() for field in record):
            _check_width(path, start, record, header)
            rows.append(_row(path, start, record[text_at], record[label_at], columns))
        start = reader.line_num + 1
    return rows


def _check_width(path: Path, line: int, record: list[str], header: list[str]) -> None:
    if len(record) != len(header):
        raise DataError(
            f"{path}: line {line}: {len(record)} fields but the header has {len(header)}; "
            'quote fields that contain commas or line breaks ("like, this")'
        )


def _read_jsonl(path: Path, text: str, columns: Columns) -> list[Row]:
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = _parse_json_line(path, number, line)
        values = []
        for role, key in (("text", columns.text), ("label", columns.label)):
            if key not in record or record[key] is None:
                raise _missing_column(path, role, key, list(record), f"line {number}: ")
            values.append(_json_value(path, number, key, record[key]))
        rows.append(_row(path, number, values[0], values[1], columns))
    return rows


def _parse_json_line(path: Path, number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except RecursionError:
        raise DataError(
            f"{path}: line {number}: JSON nested too deeply to read; "
            "each line must be one flat JSON object"
        ) from None
    except json.JSONDecodeError as err:
        hint = ""
        if number == 1 and line.lstrip().startswith("["):
            hint = " (this looks like a JSON array; write one JSON object per line instead)"
        raise DataError(
            f"{path}: line {number}, column {err.colno}: malformed JSON ({err.msg}){hint}; "
            "each line must be one complete JSON object"
        ) from None
    if not isinstance(record, dict):
        raise DataError(
            f"{path}: line {number}: expected a JSON object like "
            f'{{"text": ..., "label": ...}}, got {type(record).__name__}'
        )
    return record


def _json_value(path: Path, number: int, key: str, value: object) -> str:
    """Labels are names: numbers and booleans become their JSON spelling ("0", "true")."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    raise DataError(
        f"{path}: line {number}, key {key!r}: expected a string or number, "
        f"got {type(value).__name__}"
    )


def _row(path: Path, line: int, text: str, label: str, columns: Columns) -> Row:
    text, label = text.strip(), label.strip()
    if not text:
        raise DataError(
            f"{path}: line {line}, column {columns.text!r}: empty text; fill it in or delete the row"
        )
    if not label:
        raise DataError(
            f"{path}: line {line}, column {columns.label!r}: empty label; "
            "fill it in or delete the row"
        )
    return Row(line, text, label)
