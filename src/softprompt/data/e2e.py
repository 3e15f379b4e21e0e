"""The `e2e-nlg` built-in: E2E restaurant meaning representations -> descriptions.

The data is BIG-bench's `gem/e2e_nlg` task (1,000 examples drawn from GEM's E2E set,
the data-to-text benchmark of Li & Liang's prefix tuning), read from
`bigbench/benchmark_tasks/gem/e2e_nlg/task.json` in the bigbench 1.0.0 sdist on PyPI.
The sdist is 358 MB and the task file a small part of it, so on first use the sdist is
downloaded with pip into a temporary folder, the one task file is copied to
SOFTPROMPT_HOME/datasets/e2e-nlg/task.json and the sdist is deleted. A sdist a user
already put in SOFTPROMPT_HOME/downloads (the printed command) is read instead of
downloading. Offline with neither, loading fails with the command to run.

Split (fixed, `BUILTIN_SEED`): the distinct inputs are shuffled and cut 80/10/10 into
train / validation / test, so no meaning representation is in two splits. Every
(input, reference) pair is one row; test rows that share an input are its references
for BLEU and ROUGE-L (`softprompt.tasks.text_metrics`).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from softprompt.data._paths import downloads_dir, downloads_dir_for_shell
from softprompt.data.records import Example
from softprompt.data.splits import BUILTIN_SEED
from softprompt.errors import DataError
from softprompt.files import atomic_write_bytes, softprompt_home

BIGBENCH = "bigbench==1.0.0"
BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"
TASK_MEMBER = "bigbench/benchmark_tasks/gem/e2e_nlg/task.json"

Splits = tuple[list[Example], list[Example], list[Example]]


def e2e_install_command() -> str:
    """What a user runs (online once) so the next load finds the sdist and extracts it."""
    return f"pip download --no-deps --no-binary :all: {BIGBENCH} -d {downloads_dir_for_shell()}"


def cached_task_file() -> Path:
    return softprompt_home() / "datasets" / "e2e-nlg" / "task.json"


def locate_e2e() -> Path | None:
    """The extracted task file, else a downloaded sdist; None when neither is here (no
    network: `datasets` lists it as not installed without fetching anything)."""
    for path in (cached_task_file(), downloads_dir() / BIGBENCH_SDIST):
        if path.is_file():
            return path
    return None


def fetch_e2e() -> Path:
    """Download the sdist once into a temporary folder, keep only the task file."""
    print(
        f"e2e-nlg: first use, downloading the {BIGBENCH} sdist (358 MB) to keep its "
        f"gem/e2e_nlg/task.json in {cached_task_file()} ...",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="softprompt-bigbench-") as folder:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        done = subprocess.run(
            [*command, "-q", BIGBENCH, "-d", folder], capture_output=True, text=True
        )
        sdist = Path(folder) / BIGBENCH_SDIST
        if done.returncode != 0 or not sdist.is_file():
            last = (done.stderr.strip().splitlines() or ["no sdist written"])[-1]
            raise DataError(
                f"dataset 'e2e-nlg' is not cached and the {BIGBENCH} sdist could not be "
                f"downloaded ({last}); to fetch it by hand (online), run: {e2e_install_command()}"
            )
        return extract_task_file(sdist)


def extract_task_file(sdist: Path) -> Path:
    """Copy gem/e2e_nlg/task.json out of the sdist into the cache (one pass over the gzip)."""
    print(f"e2e-nlg: extracting {TASK_MEMBER} from {sdist.name} ...", file=sys.stderr, flush=True)
    try:
        with tarfile.open(sdist, "r|gz") as archive:
            for member in archive:
                if member.isfile() and member.name.endswith(TASK_MEMBER):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        atomic_write_bytes(cached_task_file(), handle.read())
                        return cached_task_file()
    except (tarfile.TarError, OSError, EOFError) as err:
        reason = " ".join(str(err).split())
        raise DataError(
            f"{sdist}: cannot read the archive ({reason}); delete it and run: "
            f"{e2e_install_command()}"
        ) from None
    raise DataError(
        f"{sdist}: has no {TASK_MEMBER}; it is not the {BIGBENCH} sdist, delete it and run: "
        f"{e2e_install_command()}"
    )


def read_e2e(source: Path) -> Splits:
    """The three splits from the task file (extracted first when `source` is the sdist)."""
    path = extract_task_file(source) if source.name == BIGBENCH_SDIST else source
    return split_e2e(parse_e2e(path))


def parse_e2e(path: Path) -> list[tuple[str, list[str]]]:
    """(input, references) per example of a BIG-bench task.json; `target` may be one
    string or a list of them."""
    try:
        examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
        pairs = [(e["input"].strip(), _targets(e["target"])) for e in examples]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(
            f"{path}: not a BIG-bench task.json with examples of input and target ({err}); "
            f"delete it and load e2e-nlg again (or run: {e2e_install_command()})"
        ) from None
    if not pairs or any(not text or not refs for text, refs in pairs):
        raise DataError(f"{path}: an example has an empty input or no target; delete the file")
    return pairs


def _targets(target: str | list[str]) -> list[str]:
    values = [target] if isinstance(target, str) else list(target)
    if not all(isinstance(v, str) for v in values):
        raise TypeError("target must be a string or a list of strings")
    return [v.strip() for v in values if v.strip()]


def split_e2e(pairs: list[tuple[str, list[str]]]) -> Splits:
    """Distinct inputs shuffled with `BUILTIN_SEED` and cut 80/10/10 (train / validation /
    test); each (input, reference) is a row, duplicate references of one input dropped."""
    references: dict[str, list[str]] = {}
    for text, refs in pairs:
        kept = references.setdefault(text, [])
        kept.extend(r for r in refs if r not in kept)
    inputs = sorted(references)
    random.Random(BUILTIN_SEED).shuffle(inputs)
    tenth = len(inputs) // 10

    def rows(chosen: list[str]) -> list[Example]:
        return [Example(text, ref) for text in chosen for ref in references[text]]

    return rows(inputs[2 * tenth :]), rows(inputs[:tenth]), rows(inputs[tenth : 2 * tenth])
