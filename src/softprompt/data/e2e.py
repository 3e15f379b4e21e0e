"""The `e2e-nlg` built-in: E2E restaurant meaning representations -> descriptions.

No package on PyPI or Debian carries the E2E data (checked 2026-12-06: the `bigbench`
project on PyPI serves only 0.0.1's 358 KB sdist, without the task files; 1.0.0 has
no files), so the user puts the files in `SOFTPROMPT_HOME/datasets/e2e-nlg/` (by
default `~/.cache/softprompt/datasets/e2e-nlg/`) and nothing is downloaded. Two
layouts are read, the first one found:

1. The E2E NLG challenge release's own CSVs `trainset.csv`, `devset.csv` and
   `testset_w_refs.csv` (columns `mr` and `ref`; CC BY-SA 4.0): its train / dev / test
   splits as they are, the split Li & Liang's prefix-tuning table reports on. The
   cleaned E2E's CSVs, renamed to these names, read the same way.
2. A BIG-bench `task.json` (`{"examples": [{"input": ..., "target": str | [str]}]}`,
   as BIG-bench's `gem/e2e_nlg`): one pool, split with `BUILTIN_SEED` by distinct
   input 80/10/10 into train / validation / test, so no meaning representation is in
   two splits.

Every (input, reference) pair is one row, an input's rows kept together and a
reference repeated for one input dropped; test rows that share an input are its
references for BLEU and ROUGE-L (`softprompt.tasks.text_metrics`).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from softprompt.data._paths import home_for_shell
from softprompt.data.records import Example
from softprompt.data.splits import BUILTIN_SEED
from softprompt.errors import DataError
from softprompt.files import softprompt_home

RELEASE_FILES = ("trainset.csv", "devset.csv", "testset_w_refs.csv")  # train, dev, test
TASK_FILE = "task.json"

Splits = tuple[list[Example], list[Example], list[Example]]


def e2e_folder() -> Path:
    return softprompt_home() / "datasets" / "e2e-nlg"


def cached_task_file() -> Path:
    return e2e_folder() / TASK_FILE


def e2e_install_command() -> str:
    """What `softprompt datasets` prints: copy the release's three CSVs into the folder
    (run where they are). No package carries the data, so there is no pip command."""
    folder = home_for_shell("datasets", "e2e-nlg")
    return f"mkdir -p {folder} && cp {' '.join(RELEASE_FILES)} {folder}/"


def locate_e2e() -> Path | None:
    """The folder when all three release CSVs are in it, else its task.json, else None."""
    if all((e2e_folder() / name).is_file() for name in RELEASE_FILES):
        return e2e_folder()
    return cached_task_file() if cached_task_file().is_file() else None


def missing_e2e() -> Path:
    """Called by `Builtin.load` when `locate_e2e` finds nothing: always raises, naming the
    folder, the files it wants and, when some CSVs are there, the ones still missing."""
    present = [name for name in RELEASE_FILES if (e2e_folder() / name).is_file()]
    missing = [name for name in RELEASE_FILES if name not in present]
    found = f" (it has {', '.join(present)} but not {', '.join(missing)})" if present else ""
    raise DataError(
        f"dataset 'e2e-nlg' is not installed: no package carries it, so put the E2E NLG "
        f"challenge release's {', '.join(RELEASE_FILES)} (columns mr, ref) or a BIG-bench "
        f"gem/e2e_nlg {TASK_FILE} in {e2e_folder()}/{found}; e.g. where the CSVs are, run: "
        f"{e2e_install_command()}"
    )


def read_e2e(source: Path) -> Splits:
    """The release's own three splits from the folder, or the seeded split of a task.json."""
    if source.is_dir():
        train, dev, test = (_read_release_csv(source / name) for name in RELEASE_FILES)
        return train, dev, test
    return split_e2e(parse_e2e(source))


def _read_release_csv(path: Path) -> list[Example]:
    """One release CSV: a row per distinct (mr, ref), an input's rows together."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
            if "mr" not in columns or "ref" not in columns:
                raise DataError(
                    f"{path}: needs the E2E release's columns mr and ref, found "
                    f"{', '.join(reader.fieldnames or []) or 'no header'} (E2E's testset.csv has "
                    f"no ref column: use testset_w_refs.csv)"
                )
            pairs = [
                (line, (row[columns["mr"]] or "").strip(), (row[columns["ref"]] or "").strip())
                for line, row in enumerate(reader, start=2)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read it as a UTF-8 CSV ({err})") from None
    for line, text, ref in pairs:
        if not text or not ref:
            raise DataError(f"{path}:{line}: empty mr or ref; fix or delete that row")
    if not pairs:
        raise DataError(f"{path}: has a header but no rows")
    return _rows(_group([(text, [ref]) for _, text, ref in pairs]))


def parse_e2e(path: Path) -> list[tuple[str, list[str]]]:
    """(input, references) per example of a BIG-bench task.json; `target` may be one
    string or a list of them."""
    try:
        examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
        pairs = [(e["input"].strip(), _targets(e["target"])) for e in examples]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(
            f"{path}: not a BIG-bench task.json with examples of input and target ({err}); "
            f"replace it, or put the E2E release's {', '.join(RELEASE_FILES)} beside it"
        ) from None
    if not pairs or any(not text or not refs for text, refs in pairs):
        raise DataError(f"{path}: an example has an empty input or no target; fix the file")
    return pairs


def _targets(target: str | list[str]) -> list[str]:
    values = [target] if isinstance(target, str) else list(target)
    if not all(isinstance(v, str) for v in values):
        raise TypeError("target must be a string or a list of strings")
    return [v.strip() for v in values if v.strip()]


def _group(pairs: list[tuple[str, list[str]]]) -> dict[str, list[str]]:
    """Input -> its distinct references, inputs in order of first appearance."""
    references: dict[str, list[str]] = {}
    for text, refs in pairs:
        kept = references.setdefault(text, [])
        kept.extend(r for r in refs if r not in kept)
    return references


def _rows(references: dict[str, list[str]], chosen: list[str] | None = None) -> list[Example]:
    inputs = list(references) if chosen is None else chosen
    return [Example(text, ref) for text in inputs for ref in references[text]]


def split_e2e(pairs: list[tuple[str, list[str]]]) -> Splits:
    """Distinct inputs shuffled with `BUILTIN_SEED` and cut 80/10/10 (train / validation /
    test); each (input, reference) is a row, duplicate references of one input dropped."""
    references = _group(pairs)
    inputs = sorted(references)
    random.Random(BUILTIN_SEED).shuffle(inputs)
    tenth = len(inputs) // 10
    return (
        _rows(references, inputs[2 * tenth :]),
        _rows(references, inputs[:tenth]),
        _rows(references, inputs[tenth : 2 * tenth]),
    )
