"""Every user error is one line and exit status 2, never a traceback: wrong YAML types in
every section, all unknown keys at once, long CSV fields, and a fuzz of the whole CLI
surface. (Issue 11, cases 6 and 7.)"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softprompt import backbones, cli
from softprompt.data import load_dataset
from softprompt.methods import available_methods, method_config_class
from softprompt.tasks import TaskConfig
from softprompt.train import TrainConfig
from softprompt.train import train as real_train


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    """The CLI in-process, as a shell would see it: an exception escaping main is a traceback."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own usage errors: exit 2, one usage line
        code = exc.code
    _, err = capsys.readouterr()
    return code, err


def _assert_user_error(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(name in err for name in names), err


# --- 6. wrong YAML types, in every section ---------------------------------------------------

# (a section that is not a mapping, e.g. `train: [1, 2]`, was already named before)
WRONG_TYPES = [
    ("train:\n  steps: 2.5\n", "train.steps"),
    ("method:\n  n_tokens: ten\n", "method.n_tokens"),
    ("data:\n  source: 5\n", "data.source"),
    ("data:\n  labels: [1, 2]\n", "data.labels"),
    ("data:\n  validation: [a.csv]\n", "data.validation"),
    ("train:\n  lr: [0.1]\n", "train.lr"),
    ("train:\n  lr: .inf\n", "train.lr"),
    ("train:\n  batch_size: true\n", "train.batch_size"),
    ("train:\n  bf16: 2\n", "train.bf16"),
    ("train:\n  steps: 100000000000000000000\n", "train.steps"),
    ("task:\n  template: [a, b]\n", "task.template"),
    ("task:\n  labels: negative\n", "task.labels"),
    ("task:\n  verbalizer: [' bad', ' good']\n", "task.verbalizer"),
    ("task:\n  verbalizer: {negative: 5}\n", "task.verbalizer"),
    ("task:\n  max_text_tokens: many\n", "task.max_text_tokens"),
    ("task:\n  template: null\n", "task.template"),
    ("method:\n  name: 5\n", "method.name"),
    ("method:\n  name: p-tuning\n  hidden: 1.5\n", "method.hidden"),
    ("method:\n  name: p-tuning\n  encoder: {a: 1}\n", "method.encoder"),
    ("method:\n  name: prefix-tuning\n  reparameterize: maybe\n", "method.reparameterize"),
    ("method:\n  n_tokens: 100000000\n", "method.n_tokens"),
    ("method:\n  init_text: 7\n", "method.init_text"),
    ("backbone: 5\n", "backbone"),
    ("backbone: [a]\n", "backbone"),
    ("out: {a: 1}\n", "out"),
]


@pytest.mark.parametrize("text,key", WRONG_TYPES)
def test_wrong_yaml_types_name_the_key(capsys, tmp_path, monkeypatch, nothing_loads, text, key):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(text)
    code, err = _run(capsys, ["train", "--config", str(config)])
    _assert_user_error(code, err, f"{key}:")


def test_all_problems_of_all_sections_in_one_message(capsys, tmp_path, nothing_loads):
    """7: unknown keys were reported one section at a time."""
    config = tmp_path / "run.yaml"
    config.write_text(
        "bogus: 1\ntrain:\n  stpes: 3\n  lr: fast\ndata:\n  colum: x\n"
        "task:\n  templat: x\nmethod:\n  colour: red\n  n_tokens: ten\n"
    )
    code, err = _run(capsys, ["train", "--config", str(config)])
    _assert_user_error(
        code, err, "bogus", "train.stpes", "data.colum", "task.templat", "method.colour"
    )
    assert "train.lr" in err and "method.n_tokens" in err  # bad values in the same pass
    assert "train keys are steps" in err  # what to write instead


def test_unknown_option_of_a_named_method_is_checked_against_that_method(
    capsys, tmp_path, nothing_loads
):
    config = tmp_path / "run.yaml"
    config.write_text("method:\n  name: none\n  n_tokens: 3\n  init: vocab\n")
    code, err = _run(capsys, ["train", "--config", str(config)])
    _assert_user_error(code, err, "method.n_tokens", "method.init")


@pytest.mark.parametrize(
    "content",
    ["\xff\xfe binary", "a: [" * 3000, "!!python/object:os.system {}\n", "? [a, b]\n: c\n"],
)
def test_unreadable_yaml_files_are_one_line(capsys, tmp_path, nothing_loads, content):
    config = tmp_path / "run.yaml"
    config.write_bytes(content.encode("latin-1"))
    code, err = _run(capsys, ["train", "--config", str(config)])
    _assert_user_error(code, err, "--config")


# --- 6. a CSV field over 131,072 characters ------------------------------------------------


def test_csv_field_over_the_csv_module_limit(tmp_path):
    path = tmp_path / "long.csv"
    long_text = "a long review " * 20_000  # 280,000 characters
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerow([long_text, "positive"])
        for i in range(30):
            writer.writerow([f"row {i}", ["negative", "positive"][i % 2]])
    data = load_dataset(str(path))
    texts = [e.text for e in data.train + data.validation + data.test]
    assert long_text.strip() in texts


def test_csv_field_limit_on_the_cli(capsys, tmp_path, tiny_backbone_folder, monkeypatch, llama):
    path = tmp_path / "long.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(30):
            text = "good " * 40_000 if i == 0 else f"row {i} good"
            writer.writerow([text, ["negative", "positive"][i % 2]])
    argv = ["train", "--backbone", str(tiny_backbone_folder), "--dataset", str(path),
            "--n-tokens", "2", "--steps", "2", "--eval-every", "2", "--batch-size", "4",
            "--no-baseline", "--out", str(tmp_path / "run")]  # fmt: skip
    code, err = _run(capsys, argv)
    assert code == 0, err


# --- 6. fuzz: every subcommand x every flag x wrong types, empty and huge values -------------

SPECIAL = [
    "", " ", "0", "-1", "1", "2", "2.5", "1e3", "ten", "1e400", "nan", "inf", "-inf",
    "[1, 2]", "{}", '{"a": 1}', '{"negative": [" bad"], "positive": 5}', "null", "true",
    "{text}", "{", "}", "{0}", "{text} {text}", "\\n", "\x00", "é", "9" * 5000, "x" * 200_000,
    "[" * 5000, "-", "none", "soft-prompt", "p-tuning", "prefix-tuning", "random", "text",
    "labels", "verbalizer", "linear", "generation", "classification", "test", "validation",
    "label", "/dev/null", "/proc/self", ".", "nonexistent.csv", "x.yaml", "p.safetensors",
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(SPECIAL),
    st.text(max_size=30),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats().map(str),
)
# outputs go under the fuzz's own folder: never an absolute path or a parent
OUTPUT_FLAGS = {"--out", "--config"}


def _safe(flag: str, value: str) -> str:
    if flag in OUTPUT_FLAGS:
        return "o-" + value.replace("/", "_").replace("\x00", "_")[:100]
    return value


def _surface() -> dict[str, tuple[list[str], list[str]]]:
    """Per subcommand: (flags that take a value, switches), read from the parser itself so a
    new flag is fuzzed without editing this test."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    surface = {}
    for name, subparser in sub.choices.items():
        valued, switches = [], []
        for action in subparser._actions:
            if not action.option_strings or "--help" in action.option_strings:
                continue
            (switches if action.nargs == 0 else valued).append(action.option_strings[0])
        surface[name] = (valued, switches)
    return surface


SURFACE = _surface()
FUZZ = settings(
    max_examples=int(os.environ.get("SOFTPROMPT_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
_counter = itertools.count()


def test_the_fuzz_covers_every_subcommand_and_flag():
    assert set(SURFACE) == {
        "train", "eval", "predict", "export", "info", "datasets", "backbones", "methods", "search",
        "store", "serve", "import-peft", "compare", "estimate", "pet", "meta-init",
    }  # fmt: skip
    train_flags = set(SURFACE["train"][0]) | set(SURFACE["train"][1])
    assert {"--overwrite", "--force-resume", "--resume", "--lr", "--verbalizer"} <= train_flags


@pytest.fixture
def fuzz_env(tmp_path, monkeypatch, stand_in, llama, tiny_backbone_folder):
    """Fast and safe: the tiny backbone from memory, training capped at 2 steps of
    1 micro-batch (a valid `--steps 1000000` must not train for long), cwd in tmp."""
    real_load = backbones.load_backbone

    def load_backbone(name, *args, **kwargs):
        if str(name) in (str(tiny_backbone_folder), llama.name):
            return llama
        return real_load(name, *args, **kwargs)

    def short_train(model, dataset, config, out_dir, **kwargs):
        capped = dataclasses.replace(config, steps=min(config.steps, 2), grad_accum=1)
        return real_train(model, dataset, capped, out_dir, **{**kwargs, "progress": False})

    stand_in("load_backbone", load_backbone)
    stand_in("train", short_train)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _check(capsys, argv: list[str]) -> None:
    code, err = _run(capsys, argv)
    if os.environ.get("FUZZ_LOG"):
        with open(os.environ["FUZZ_LOG"], "a") as log:
            last = err.strip().replace("\r", "\n").splitlines()[-1:] or [""]
            log.write(f"{argv[0]}\t{code}\t{last[0][:150]}\n")
    assert code in (0, 2), (argv[:12], err[-2000:])
    assert "Traceback" not in err, (argv[:12], err[-2000:])
    if code == 2 and "usage:" not in err:
        assert err.strip().replace("\r", "\n").splitlines()[-1].startswith("softprompt "), err


def _flags(command: str):
    valued, switches = SURFACE[command]
    options = []
    if valued:
        pairs = st.tuples(st.sampled_from(valued), VALUES)
        options.append(pairs.map(lambda fv: [f"{fv[0]}={_safe(*fv)}"]))
    if switches:
        options.append(st.sampled_from(switches).map(lambda s: [s]))
    return st.lists(st.one_of(*options), min_size=1, max_size=3).map(
        lambda parts: [p for part in parts for p in part]
    )


@given(extra=_flags("train"))
@FUZZ
def test_fuzz_train(capsys, fuzz_env, train_argv, extra):
    out = f"run-{next(_counter)}"
    _check(capsys, [*train_argv(Path(out)), *extra])


@pytest.fixture(scope="module")
def fuzz_prompt(tmp_path_factory, tiny_backbone_folder, small_csv) -> Path:
    out = tmp_path_factory.mktemp("fuzz-prompt")
    argv = ["train", "--backbone", str(tiny_backbone_folder), "--dataset", str(small_csv),
            "--method", "p-tuning", "--n-tokens", "2", "--steps", "2", "--eval-every", "2",
            "--batch-size", "4", "--no-baseline", "--out", str(out / "run")]  # fmt: skip
    assert cli.main(argv) == 0
    return out / "run" / "prompt.safetensors"


@given(
    command=st.sampled_from(["eval", "predict", "export", "info"]),
    data=st.data(),
)
@FUZZ
def test_fuzz_prompt_commands(capsys, fuzz_env, fuzz_prompt, command, data):
    valid = st.just(str(fuzz_prompt))  # mostly the real prompt, so the flags get to act
    prompt = data.draw(st.one_of(valid, valid, VALUES.map(lambda v: _safe("--out", v))))
    positional = [prompt]
    if command == "predict":
        positional += data.draw(st.lists(VALUES, max_size=3).map(lambda t: [f"{x}" for x in t]))
        positional = [p if not p.startswith("-") else " " + p for p in positional]
    extra = data.draw(_flags(command))
    if command == "export" and not any(e.startswith("--out") for e in extra):
        extra += [f"--out=flat-{next(_counter)}.safetensors"]
    stdin = data.draw(st.sampled_from(["a good film\n\nso dull\n", "", "\n \n"]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO(stdin))  # predict reads texts from it by default
        _check(capsys, [command, *positional, *extra])


@pytest.fixture(scope="module")
def fuzz_adapter(tmp_path_factory, fuzz_prompt) -> Path:
    out = tmp_path_factory.mktemp("fuzz-adapter") / "adapter"
    assert cli.main(["export", str(fuzz_prompt), "--format", "peft", "--out", str(out)]) == 0
    return out


@given(data=st.data())
@FUZZ
def test_fuzz_import_peft(capsys, fuzz_env, fuzz_adapter, tiny_backbone_folder, data):
    valid = st.just(str(fuzz_adapter))  # mostly the real adapter, so the flags get to act
    adapter = data.draw(st.one_of(valid, valid, VALUES.map(lambda v: _safe("--out", v))))
    adapter = adapter if not adapter.startswith("-") else " " + adapter
    fixed = ["--backbone", str(tiny_backbone_folder), f"--out=imported-{next(_counter)}"]
    _check(capsys, ["import-peft", adapter, *fixed, *data.draw(_flags("import-peft"))])


# the recipes above a run (compare, pet, meta-init) and estimate: each valid draw trains or
# calibrates on the tiny backbone, so fewer examples; the base argv is a small valid run
RECIPE_BASE = {
    "compare": ["--methods", "zero-shot,soft-prompt", "--seeds", "1", "--steps", "1",
                "--n-tokens", "2", "--batch-size", "4", "--test-limit", "4"],
    "pet": ["--shots", "2", "--steps", "1", "--n-tokens", "2", "--batch-size", "2",
            "--unlabelled-limit", "4", "--test-limit", "4",
            "--pattern", "review : {text} sentiment :", "--pattern", "{text} so it was"],
    "meta-init": ["--outer-steps", "1", "--inner-steps", "1", "--n-tokens", "2",
                  "--batch-size", "2"],
    "estimate": ["--batch-size", "2"],
}  # fmt: skip


# budgets are fuzzed through train (capped there); here a valid huge budget would just run
BUDGET_FLAGS = {"--steps", "--outer-steps", "--inner-steps", "--generations", "--seeds",
                "--unlabelled-limit", "--growth", "--tasks", "--seq-len", "--batch-size",
                "--grad-accum", "--eval-examples", "--test-limit", "--n-tokens", "--shots",
                "--methods", "--sources", "--pattern", "--words"}  # fmt: skip


def _recipe_flags(command: str):
    valued, switches = SURFACE[command]
    valued = [f for f in valued if f not in BUDGET_FLAGS]
    switches = [f for f in switches if f not in {"--resume", "--overwrite"}]
    pairs = st.tuples(st.sampled_from(valued), VALUES).map(lambda fv: [f"{fv[0]}={_safe(*fv)}"])
    options = [pairs, st.sampled_from(switches).map(lambda s: [s])] if switches else [pairs]
    return st.lists(st.one_of(*options), min_size=1, max_size=3).map(
        lambda parts: [p for part in parts for p in part]
    )


@given(command=st.sampled_from(sorted(RECIPE_BASE)), data=st.data())
@settings(FUZZ, max_examples=int(os.environ.get("SOFTPROMPT_FUZZ_RECIPES", "12")))
def test_fuzz_recipe_commands(capsys, fuzz_env, tiny_backbone_folder, small_csv, command, data):
    base = ["--backbone", str(tiny_backbone_folder), *RECIPE_BASE[command]]
    if command in ("compare", "pet"):
        base += ["--dataset", str(small_csv), "--out", f"{command}-{next(_counter)}"]
    if command == "meta-init":
        base += ["--sources", f"{small_csv},{small_csv}", "--out", f"meta-{next(_counter)}"]
    _check(capsys, [command, *base, *data.draw(_recipe_flags(command))])


@given(data=st.data())
@FUZZ
def test_fuzz_listing_commands(capsys, data):
    command = data.draw(st.sampled_from(["datasets", "backbones", "methods"]))
    extra = data.draw(st.lists(VALUES, max_size=2))
    _check(capsys, [command, *[f"--x={v}" for v in extra]])


# --- the YAML side of the fuzz: every key of every section, any JSON-ish value ------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(SPECIAL[:45]),
    st.text(max_size=20),
)
YAML_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _keys() -> dict[str, list[str]]:
    method_keys = sorted(
        {f.name for m in available_methods() for f in dataclasses.fields(method_config_class(m))}
    )
    return {
        "train": [f.name for f in dataclasses.fields(TrainConfig)] + ["stpes"],
        "data": ["source", "text_column", "label_column", "task", "validation", "test", "labels"],
        "task": [f.name for f in dataclasses.fields(TaskConfig)] + ["templat"],
        "method": ["name", *method_keys, "colour"],
    }


KEYS = _keys()
SECTION_ENTRY = st.sampled_from(sorted(KEYS)).flatmap(
    lambda section: st.tuples(st.just(section), st.sampled_from(KEYS[section]), YAML_VALUES)
)


@given(
    entries=st.lists(SECTION_ENTRY, min_size=1, max_size=4),
    top=st.dictionaries(
        st.sampled_from(["backbone", "out", "baseline", "data", "method", "bogus"]),
        YAML_VALUES,
        max_size=1,
    ),
)
@FUZZ
def test_fuzz_yaml_config(capsys, fuzz_env, tiny_backbone_folder, small_csv, entries, top):
    values: dict = {}
    for section, key, value in entries:
        values.setdefault(section, {})[key] = value
    values.update(top)
    if "out" in values:
        values["out"] = f"run-{next(_counter)}"  # values are fuzzed, where files go is not
    config = fuzz_env / f"c{next(_counter)}.yaml"
    config.write_text(yaml.safe_dump(values))
    argv = ["train", "--config", str(config), "--out", f"run-{next(_counter)}"]
    if "backbone" not in values:  # flags override the file: only where it does not say
        argv += ["--backbone", str(tiny_backbone_folder)]
    data = values.get("data")
    if not isinstance(data, str) and not (isinstance(data, dict) and "source" in data):
        argv += ["--dataset", str(small_csv)]
    _check(capsys, argv)
