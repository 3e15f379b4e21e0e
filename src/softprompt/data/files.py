"""Reading the user's own CSV / JSON Lines / JSON array files.

Files are small, so each is read whole; every problem is reported with the file,
the line (or the item of a JSON array, the row of a table) and the column or key,
plus what to change, because users fix their data from the error message alone.
Parquet files and `datasets` folders are read in `softprompt.data.hf` and checked
here by `value_rows`, so every format gets the same messages.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softprompt.errors import DataError

SUPPORTED_EXTENSIONS = (".csv", ".jsonl", ".json")  # text formats read here; see data/hf.py
COLUMN_FLAGS = {"text": "--text-column", "label": "--label-column"}


@dataclass(frozen=True)
class Row:
    """A raw row with its 1-based position, kept so later checks can point at it.

    `unit` names what `line` counts: a file's "line", a JSON array's "item", or a
    table's "row" (Parquet, `datasets`), so messages point where the user can look.
    """

    line: int
    text: str
    label: str
    unit: str = "line"

    @property
    def place(self) -> str:
        """Where the row is, as messages print it: "line 3", "item 2", "row 7"."""
        return f"{self.unit} {self.line}"


@dataclass(frozen=True)
class Columns:
    """Which column holds the text and which the label, as named by the user."""

    text: str = "text"
    label: str = "label"


def read_rows(path: str | Path, columns: Columns) -> list[Row]:
    """Read every row of a .csv / .jsonl / .json file, checking as it goes.

    A .json file holds either one JSON array of objects or JSON Lines: both are common
    exports (pandas `to_json(orient="records")`, `datasets` `to_json`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise DataError(
            f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)}, .parquet "
            "(CSV with a header row, JSON Lines: one object per line, or a JSON array), "
            "or a `datasets` save_to_disk folder"
        )
    text = read_text(path)
    if suffix == ".csv":
        rows = _read_csv(path, text, columns)
    elif suffix == ".json" and text.lstrip("\ufeff \t\r\n").startswith("["):
        rows = _read_json_array(path, text, columns)
    else:
        rows = _read_jsonl(path, text, columns)
    return check_not_empty(path, rows)


def check_not_empty(where: str | Path, rows: list[Row]) -> list[Row]:
    """A file or split without rows is refused: nothing could be trained or scored on it."""
    if not rows:
        raise DataError(f"{where}: no data rows (only a header or blank lines); add some rows")
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


def _missing_column(
    path: str | Path, role: str, name: str, present: list[str], where: str
) -> DataError:
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
        rows.append(_record_row(path, number, "line", record, columns))
    return rows


def _read_json_array(path: Path, text: str, columns: Columns) -> list[Row]:
    """One JSON array of objects; positions are items (1-based) as arrays have no lines."""
    try:
        records = json.loads(text)
    except RecursionError:
        raise DataError(
            f"{path}: JSON nested too deeply to read; use an array of flat objects"
        ) from None
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: line {err.lineno}, column {err.colno}: malformed JSON ({err.msg}); "
            "the file must be one JSON array of objects, or JSON Lines"
        ) from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(records).__name__}")
    rows = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(
                f"{path}: item {number}: expected a JSON object like "
                f'{{"text": ..., "label": ...}}, got {type(record).__name__}'
            )
        rows.append(_record_row(path, number, "item", record, columns))
    return rows


def _record_row(path: Path, number: int, unit: str, record: dict, columns: Columns) -> Row:
    values = []
    for role, key in (("text", columns.text), ("label", columns.label)):
        if key not in record or record[key] is None:
            raise _missing_column(path, role, key, list(record), f"{unit} {number}: ")
        values.append(_json_value(path, f"{unit} {number}", key, record[key]))
    return _row(path, number, values[0], values[1], columns, unit)


def value_rows(
    where: str | Path, texts: list[Any], labels: list[Any], columns: Columns
) -> list[Row]:
    """Rows from a table's two columns (Parquet, `datasets`): the same checks as a file.

    Missing values (None) are empty cells, refused like an empty CSV field.
    """
    return [
        _row(
            where,
            number,
            "" if text is None else _json_value(where, f"row {number}", columns.text, text),
            "" if label is None else _json_value(where, f"row {number}", columns.label, label),
            columns,
            "row",
        )
        for number, (text, label) in enumerate(zip(texts, labels, strict=True), start=1)
    ]


def check_columns(where: str | Path, present: list[str], columns: Columns) -> None:
    """A table must hold both named columns; the message lists the ones it has."""
    for role, name in (("text", columns.text), ("label", columns.label)):
        if name not in present:
            raise _missing_column(where, role, name, present, "")


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
            hint = (
                " (this looks like a JSON array: name the file .json, or write one object per line)"
            )
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


def _json_value(path: str | Path, place: str, key: str, value: object) -> str:
    """Labels are names: numbers and booleans become their JSON spelling ("0", "true")."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    raise DataError(
        f"{path}: {place}, key {key!r}: expected a string or number, got {type(value).__name__}"
    )


def _row(
    path: str | Path, line: int, text: str, label: str, columns: Columns, unit: str = "line"
) -> Row:
    text, label = text.strip(), label.strip()
    if not text:
        raise DataError(
            f"{path}: {unit} {line}, column {columns.text!r}: empty text; "
            "fill it in or delete the row"
        )
    if not label:
        raise DataError(
            f"{path}: {unit} {line}, column {columns.label!r}: empty label; "
            "fill it in or delete the row"
        )
    return Row(line, text, label, unit)
