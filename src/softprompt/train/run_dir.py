"""The run folder (`--out`): checked before anything loads, locked while a run writes it.

Three ways a run folder lost work before: a fresh run silently replaced an earlier
run's best prompt; two runs on one folder interleaved their files; `--resume`
continued a checkpoint made with other settings (or, with no checkpoint, started
over without a word). Here:

- `claim(out, config, resume=...)` checks the folder is usable (not a file, writable)
  and that the intent fits what is in it (a run there needs `--resume` or
  `--overwrite`; `--resume` needs a checkpoint), then holds a lock for the run.
- The lock is `flock` on `OUT/.softprompt.lock`, holding the owner's pid. The kernel
  drops it when the process dies, so a crashed or killed run never leaves a stale
  lock. It is re-entrant within a process (`api.run` claims, then `train` claims again).
  A run that ends removes the file (while still holding the lock, and only its own).
- `check_resume` compares the resumable config stored in the checkpoint with this
  run's, and names every key that differs.
- `save_settings` keeps the run's whole config in `OUT/run.json` beside the checkpoint,
  so `train --out OUT --resume` alone goes on with the run's own settings
  (`stored_settings`; flags given with it override them and are checked).
- A folder that `claim` created is removed again when the run leaves nothing in it but
  the lock and its settings (a refusal or crash before any result): no junk folders.

Under DDP every process checks (before any writes: a barrier follows), only the
main process locks and clears.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from softprompt.errors import ConfigError
from softprompt.files import atomic_write_text
from softprompt.promptfile import read_prompt_file
from softprompt.train.config import TrainConfig
from softprompt.validate import load_json_bounded

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".softprompt.lock"
CHECKPOINT = "checkpoint.safetensors"
SETTINGS = "run.json"  # the run's whole config (RunConfig.to_dict()), for `--resume` alone
RUN_FILES = (
    "prompt.safetensors",
    CHECKPOINT,
    "metrics.jsonl",
    "report.md",
    "report.json",
    "curves.png",
)
# train keys that may change between a run and its resume: how long to go on and how to
# evaluate change no update already made; everything else must match
SAFE_TO_CHANGE = frozenset(
    {
        "steps",
        "eval_every",
        "eval_examples",
        "eval_batch_size",
        "patience",
        "overwrite",
        "force_resume",
        "divergence_factor",
        "gradient_checkpointing",  # memory for time; the gradients are the same
    }
)

_held: dict[str, list[int]] = {}  # real path of a lock file -> [fd, depth], this process


def _flag(config: TrainConfig, name: str) -> bool:
    return bool(getattr(config, name, False))


def check_out_dir(out: str | Path, config: TrainConfig, *, resume: bool) -> Path:
    """Everything about `--out` that can be known before loading a model or data."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder; choose a folder for the run")
    _check_writable(out)
    overwrite = _flag(config, "overwrite")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; choose one")
    if resume and not (out / CHECKPOINT).is_file():
        raise ConfigError(
            f"--resume: {out} has no {CHECKPOINT}, so there is nothing to resume; "
            "start without --resume"
        )
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not resume and not overwrite:
        raise ConfigError(
            f"--out {out} already holds a run ({', '.join(existing)}); continue it with "
            "--resume, replace it with --overwrite (train.overwrite), or choose another --out"
        )
    return out


def _check_writable(out: Path) -> None:
    """The folder, or the nearest folder that exists above it, must be writable."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"--out {out}: {probe} is a file, so no folder can be made there")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--out {out}: {probe} is not writable by this user; choose a folder you can write to"
        )


def _make_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the folder ({exc.strerror})") from None


@contextlib.contextmanager
def lock(out: str | Path) -> Iterator[None]:
    """Hold `out`'s run lock; a second process gets an error naming the holder's pid."""
    out = Path(out)
    _make_dir(out)
    path = out / LOCK_FILE
    key = os.path.realpath(path)
    if key in _held:
        _held[key][1] += 1
    else:
        _held[key] = [_acquire(path, out), 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if not _held[key][1]:
            _release(_held.pop(key)[0], path)


def _release(fd: int, path: Path) -> None:
    """Remove the lock file, then unlock: the file goes only while this process still
    holds the lock and only if it is ours (same file, our pid), so a run never deletes
    a lock another run took. `_acquire` re-checks the file after locking, so a run that
    opened it just before the removal does not hold a lock on a deleted file."""
    if _is_ours(fd, path):
        with contextlib.suppress(OSError):  # gone already (an emptied folder), or read-only
            path.unlink()
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _is_ours(fd: int, path: Path) -> bool:
    """Whether `path` is still the file open as `fd` and holds this process's pid."""
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return False
    return pid == str(os.getpid()) and _same_file(fd, path)


def _acquire(path: Path, out: Path) -> int:
    """Open and lock `path`; retried when the file was removed (a finished run cleaning
    up) between our open and our lock, so the lock is always on the file at `path`."""
    while True:
        fd = _open_locked(path, out)
        if fcntl is None or _same_file(fd, path):
            break
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _open_locked(path: Path, out: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise ConfigError(
            f"--out {out}: cannot write there ({exc.strerror}); choose a folder you can write to"
        ) from None
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            f"--out {out}: another softprompt run (pid {holder}) is using this folder; "
            "wait for it to end or choose another --out"
        ) from None
    return fd


@contextlib.contextmanager
def claim(out: str | Path, config: TrainConfig, *, resume: bool) -> Iterator[Path]:
    """Check `out` for this run, then hold it: lock (main process) and, with
    `--overwrite`, clear the earlier run's files so none of them mixes with the new ones."""
    from softprompt import distributed

    out = check_out_dir(out, config, resume=resume)
    process = distributed.setup()
    if not process.main:
        distributed.barrier(process)  # the main process checked and cleared first
        yield out
        return
    created = _missing_top(out)
    with lock(out):
        try:
            if _flag(config, "overwrite") and not resume:
                for name in RUN_FILES:
                    (out / name).unlink(missing_ok=True)
            distributed.barrier(process)
            yield out
        finally:
            if created is not None:
                _remove_if_empty(out, created)


def _missing_top(out: Path) -> Path | None:
    """The highest folder of `out` (itself or a parent) that does not exist yet: what
    this run creates, so what it may remove again. None when `out` exists."""
    if out.exists():
        return None
    top = out
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return top


def _remove_if_empty(out: Path, top: Path) -> None:
    """Remove the folders this run created (`out` up to `top`) when it left no result in
    `out`: only the lock and the settings file. Called while the lock is still held."""
    try:
        if not set(os.listdir(out)) <= {LOCK_FILE, SETTINGS}:
            return
        for name in (LOCK_FILE, SETTINGS):
            (out / name).unlink(missing_ok=True)
        folder = out
        while True:
            folder.rmdir()
            if folder == top:
                return
            folder = folder.parent
    except OSError:  # a file appeared, or no permission: leave what is there
        return


F = TypeVar("F", bound=Callable[..., Any])


def claims_out_dir(locate: Callable[[inspect.BoundArguments], tuple[Any, TrainConfig]]) -> Any:
    """Decorator: run the function inside `claim(...)` of the folder that `locate` finds
    in its arguments (the function's own `resume` keyword says whether it resumes)."""

    def decorate(func: F) -> F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            out, config = locate(bound)
            with claim(out, config, resume=bool(bound.arguments.get("resume"))):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


# -- resume checks ------------------------------------------------------------------


def data_fingerprint(examples: list[Any]) -> str:
    """sha256 of a split's rows (text and label): a changed data file is another run."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.text, example.label]).encode())
    return digest.hexdigest()[:16]


def resumable_config(
    train: TrainConfig,
    describe: dict[str, Any],
    dataset_name: str,
    rows: list[Any],
    validation: list[Any] | None = None,
) -> dict[str, Any]:
    """What a checkpoint must agree on with the run that resumes it. The validation rows
    count too: the best prompt is picked by comparing scores across the resume."""
    data = {"dataset": dataset_name, "train_rows": data_fingerprint(rows)}
    if validation is not None:
        data["validation_rows"] = data_fingerprint(validation)
    return {
        "train": _train_keys(train),
        "method": describe["method"],
        "task": describe["task"],
        "backbone": describe["backbone"]["fingerprint"],
        "data": data,
    }


def _train_keys(train: TrainConfig) -> dict[str, Any]:
    """The train keys a resume must keep; `head_lr` only when set, so a checkpoint
    written before that option existed (the same run: one lr for all) still resumes."""
    values = {k: v for k, v in train.to_dict().items() if k not in SAFE_TO_CHANGE}
    if values.get("head_lr") is None:
        values.pop("head_lr", None)
    return values


def combined_resumable(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint's config from each task's `resumable_config`: the task's own for a
    one-task run, `{"tasks": {name: ...}}` for several (as train/loop.py writes it)."""
    return next(iter(configs.values())) if len(configs) == 1 else {"tasks": configs}


def save_settings(out: Path, settings: dict[str, Any]) -> None:
    """Keep the run's whole config beside its checkpoint (see `stored_settings`)."""
    atomic_write_text(out / SETTINGS, json.dumps({"config": settings}, indent=2))


# a resumed run takes these from its own flags, never from the stored settings
NOT_STORED = ("out",)
NOT_STORED_TRAIN = ("overwrite", "force_resume")


def stored_settings(out: str | Path) -> dict[str, Any] | None:
    """The config values (RunConfig.to_dict() form) that the run in `out` was started
    with: OUT/run.json, or for a run made before that file existed, the `run` entry of
    its best prompt file. None when neither is there (then flags alone decide)."""
    out = Path(out)
    settings = _settings_file(out)
    if settings is None:
        prompts = [out / "prompt.safetensors", *sorted(out.glob("*/prompt.safetensors"))]
        for path in (p for p in prompts if p.is_file()):
            settings = read_prompt_file(path)[1].get("run")
            break
    if not isinstance(settings, dict):
        return None
    values = {k: v for k, v in settings.items() if k not in NOT_STORED}
    if isinstance(values.get("train"), dict):
        values["train"] = {k: v for k, v in values["train"].items() if k not in NOT_STORED_TRAIN}
    return values


def _settings_file(out: Path) -> dict[str, Any] | None:
    path = out / SETTINGS
    if not path.is_file():
        return None
    try:
        settings = load_json_bounded(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError):
        settings = None
    if not isinstance(settings, dict) or not isinstance(settings.get("config"), dict):
        raise ConfigError(
            f"--resume: {path} is unreadable; give the run's settings as flags (or --config) "
            f"and delete {path}"
        )
    return settings["config"]


# keys that older checkpoints lack: absent there, they are reported as not checked
ADDED_LATER = ("data.validation_rows",)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def config_differences(
    stored: dict[str, Any], current: dict[str, Any], ignore: list[str] | None = None
) -> list[str]:
    """`key: checkpoint X, now Y` for each key that differs (JSON-normalized: tuples are
    lists), leaving out the dotted keys in `ignore`."""
    old = _flatten(json.loads(json.dumps(stored)))
    new = _flatten(json.loads(json.dumps(current)))
    return [
        f"{key}: checkpoint {old.get(key, '(absent)')!r}, now {new.get(key, '(absent)')!r}"
        for key in sorted((set(old) | set(new)) - set(ignore or ()))
        if old.get(key, "(absent)") != new.get(key, "(absent)")
    ]


def unrecorded(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys of ADDED_LATER (per task too) that this run records and an older checkpoint
    lacks: kept loadable, they are reported as not checked instead of as a change."""
    old = _flatten(json.loads(json.dumps(stored)))
    return [k for k in _flatten(current) if k.endswith(ADDED_LATER) and k not in old]


def check_resume(
    path: Path, stored: dict[str, Any] | None, current: dict[str, Any], config: TrainConfig
) -> None:
    """Refuse to continue a checkpoint made with another config, unless forced."""
    if _flag(config, "force_resume"):
        return
    if stored is None:
        raise ConfigError(
            f"--resume: {path} records no config (written by an older softprompt), so it "
            "cannot be checked against this run; add --force-resume to continue it anyway, "
            "or start a new run (another --out, or --overwrite)"
        )
    unchecked = unrecorded(stored, current)
    if unchecked:
        print(
            f"softprompt: --resume: {path} was written by an older softprompt that did not "
            f"record {', '.join(unchecked)}; whether the validation rows changed could not "
            "be checked",
            file=sys.stderr,
        )
    differ = config_differences(stored, current, ignore=unchecked)
    if differ:
        raise ConfigError(
            f"--resume: {path} was made with another config ({'; '.join(differ)}); resume with "
            "the original values, add --force-resume to continue anyway, or start a new run "
            "(another --out, or --overwrite)"
        )


def check_out_file(path: str | Path, flag: str) -> Path:
    """A file to write (e.g. `export --out`): not a folder, in a folder that can be written."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"{flag} {path}: is a folder; give a file name such as prompt.safetensors"
        )
    parent = path.parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is a file, so no folder can be made there")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {parent} is not writable by this user")
    return path
