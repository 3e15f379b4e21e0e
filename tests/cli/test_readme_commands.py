"""Every `softprompt ...` command in a code block of README.md and docs/**/*.md parses,
and the train / eval / predict / export / info / listing lines run as written, in page
order, on tiny backbones: a renamed flag, a broken default or a command the docs show
that fails (the README's P-tuning line did, issue 21) breaks this test, not a user.

How a command runs here: in a fresh folder per page (configs/ linked in, the `my.csv`
the docs describe written there), `--backbone` replaced by a tiny saved backbone of the
same kind (decoder, encoder, vision, encoder-decoder) and a few tiny steps appended (`--steps 2`,
`--test-limit 4`, ...); eval also gets `--test-limit`. Everything else is as written.

Parsed only, with the reason kept in PARSE_ONLY / `_why_parse_only`:
- `serve`, `store`: a server and the user's prompt store;
- `search`, `compare`: budgeted runs of their own (tests/search, tests/recipes run them);
- `import-peft`: a PEFT adapter folder the user brings;
- a command on the user's own data (`my_photos/`, `labels.csv`, `my-ner.conll`,
  `my_tickets.csv`, image files) or on a built-in dataset that is not installed;
- a command whose input file a parsed-only command above would have written.
"""

from __future__ import annotations

import csv
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from softprompt import cli
from softprompt.config import build_run_config, load_yaml
from softprompt.data import builtin_datasets
from softprompt.tasks.template import Template

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```(?:bash|sh|shell|console)?\n(.*?)```", re.S)

PARSE_ONLY = {
    "serve": "starts an HTTP server",
    "store": "writes the user's prompt store",
    "search": "a budgeted search run of its own (tests/search run the methods)",
    "import-peft": "needs a PEFT adapter folder the user brings",
    "compare": "a grid of methods x seeds (tests/recipes/test_compare.py runs it tiny)",
    "estimate": "calibrates on the named backbone (tests/core/test_estimate.py runs it tiny)",
    "pet": "several trainings and a distillation (tests/fewshot/test_pet.py runs it tiny)",
    "meta-init": "an outer loop over source tasks (tests/fewshot/test_meta_init.py runs it tiny)",
}
RUN = {"train", "eval", "predict", "export", "info", "backbones", "datasets", "methods"}
USER_DATA = (
    "my_photos/",
    "labels.csv",
    "my-ner.conll",
    "my_tickets.csv",
)  # the user's own data, not shipped
ENCODERS = ("minilm", "bert", "roberta", "e5", "bge")
VISION = ("dinov2", "vit", "deit")
SEQ2SEQ = ("flan-t5", "t5-", "bart")
TINY_STEPS = ["--steps", "2", "--eval-every", "2", "--batch-size", "2", "--eval-examples", "4",
              "--test-limit", "4"]  # fmt: skip


def page_commands(page: Path) -> list[list[str]]:
    """argv of each `softprompt` command in the page's code blocks, in order (a line may
    chain several with &&; a trailing backslash continues a line; # starts a comment)."""
    commands = []
    for block in BLOCK.findall(page.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.strip().removeprefix("$ ")
                if part.split(" ")[0] == "softprompt":  # not curl's or python's lines
                    commands.append(shlex.split(part, comments=True))
    return commands


def _all_commands() -> list[tuple[str, list[str]]]:
    return [(p.relative_to(ROOT).as_posix(), argv) for p in PAGES for argv in page_commands(p)]


def test_the_docs_show_commands_of_every_kind():
    shown = {argv[1] for _, argv in _all_commands()}
    assert {"train", "eval", "predict", "export", "info", "serve", "store"} <= shown
    assert sum(argv[1] == "train" for _, argv in _all_commands()) >= 8


@pytest.mark.parametrize(
    "page, argv", _all_commands(), ids=lambda v: " ".join(v)[:80] if isinstance(v, list) else v
)
def test_docs_command_parses(page, argv, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = list(argv[1:])
    if "--init-file" in argv:  # a file an earlier command writes: stand one in
        path = tmp_path / "prompt.safetensors"
        path.write_bytes(b"x")
        argv[argv.index("--init-file") + 1] = str(path)
    args = cli.build_parser().parse_args(argv)
    if args.command != "train":
        return
    config = cli._config_from_args(args)
    for spec in config.task_specs():
        template = spec.task.get("template")
        if template and "{p" in template:
            assert sum(Template(template).slot_sizes) == spec.method["n_tokens"]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    build_run_config(load_yaml(path))


# --- running them -----------------------------------------------------------------------


@dataclass
class PageRun:
    """What ran and what was only parsed, and the outputs parsed-only commands name."""

    page: str
    folders: dict[str, Path]
    ran: list[str] = field(default_factory=list)
    parsed: list[tuple[str, str]] = field(default_factory=list)
    not_written: list[str] = field(default_factory=list)  # --out of parsed-only commands


def _installed() -> set[str]:
    return {info.name for info in builtin_datasets() if info.installed}


def _datasets(argv: list[str]) -> list[str]:
    """The data a train command names: --dataset, or the YAML config's data/tasks."""
    if "--dataset" in argv:
        return [argv[argv.index("--dataset") + 1]]
    if "--config" in argv:
        values = load_yaml(argv[argv.index("--config") + 1])
        config = build_run_config(values)
        return [spec.data.source for spec in config.task_specs()]
    return ["movie-sentiment"]


def _written_by(path: str) -> str | None:
    """The page whose command writes `path` (its --out holds it), if any."""
    for page, argv in _all_commands():
        out = argv[argv.index("--out") + 1] if "--out" in argv else None
        if out and argv[1] in ("train", "export") and path.startswith(out.rstrip("/")):
            return page
    return None


def _why_parse_only(argv: list[str], state: PageRun, installed: set[str]) -> str | None:
    command = argv[1]
    if command in PARSE_ONLY:
        return PARSE_ONLY[command]
    assert command in RUN, f"a new command {command!r}: run it here or say why not"
    if any(part.startswith(USER_DATA) for part in argv):
        return "the user's own data"
    if command == "predict" and any(part.endswith((".png", ".jpg")) for part in argv):
        return "the user's own images"
    if command == "train":
        missing = [d for d in _datasets(argv) if "." not in d and d not in installed]
        if missing:
            return f"dataset {', '.join(missing)} not installed"
    inputs = [p for p in argv[2:] if p.endswith(".safetensors") and not p.startswith("-")]
    if command in ("eval", "predict", "export", "info") or "--init-file" in argv:
        if "--init-file" in argv:
            inputs = [argv[argv.index("--init-file") + 1]]
        if "--out" in argv and command == "export":
            inputs = [p for p in inputs if p != argv[argv.index("--out") + 1]]
        absent = [p for p in inputs if not Path(p).exists()]
        if absent and all(any(p.startswith(o) for o in state.not_written) for p in absent):
            return f"{absent[0]} comes from a command above that is parsed only"
        elsewhere = {_written_by(p) for p in absent} - {None, state.page}
        if absent and all(_written_by(p) in elsewhere for p in absent):
            return f"{absent[0]} comes from a command on {sorted(elsewhere)[0]} (run there)"
    return None


def _tiny(argv: list[str], folders: dict[str, Path]) -> list[str]:
    """The command on a tiny backbone with tiny steps (flags appended: the last wins)."""
    argv = list(argv[1:])
    if argv[0] == "train":
        named = argv[argv.index("--backbone") + 1] if "--backbone" in argv else ""
        kind = next((k for k, names in (("bert", ENCODERS), ("vision", VISION), ("t5", SEQ2SEQ))
                     if named.startswith(names)), "llama")  # fmt: skip
        return [*argv, "--backbone", str(folders[kind]), *TINY_STEPS]
    if argv[0] == "eval":
        return [*argv, "--test-limit", "4"]
    return argv


def _byte_llama(folder: Path) -> Path:
    """A random 2-layer llama whose tokenizer has every byte (no merges): unlike the
    word-level tiny tokenizer, any dataset's label words get tokens of their own."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {t: i for i, t in enumerate([*specials, *sorted(pre_tokenizers.ByteLevel.alphabet())])}
    tokens = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokens.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokens.decoder = decoders.ByteLevel()
    tokens.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokens, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", model_max_length=512,
    ).save_pretrained(folder)  # fmt: skip
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_folders(bert_folder, tmp_path_factory) -> dict[str, Path]:
    from softprompt.backbones.tiny import tiny_seq2seq
    from softprompt.backbones.tiny_vision import tiny_dinov2

    folder = tmp_path_factory.mktemp("backbone")
    tiny_dinov2().model.save_pretrained(folder / "tiny-dinov2")
    llama = _byte_llama(folder / "byte-llama")
    t5 = tiny_seq2seq("t5")
    t5.model.save_pretrained(folder / "tiny-t5")
    t5.tokenizer.save_pretrained(folder / "tiny-t5")
    return {
        "llama": llama,
        "bert": bert_folder,
        "vision": folder / "tiny-dinov2",
        "t5": folder / "tiny-t5",
    }


def _user_csv(folder: Path) -> None:
    """The `my.csv` the docs train on: a review column and star labels 1 and 5."""
    with open(folder / "my.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "stars"])
        for i in range(24):
            writer.writerow(
                [f"{'great fun' if i % 2 else 'dull mess'} number {i}", 5 - 4 * (i % 2)]
            )


@pytest.mark.slow
@pytest.mark.parametrize(
    "page", [p for p in PAGES if page_commands(p)], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_docs_commands_run(page, tiny_folders, tmp_path, monkeypatch, capsys):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    _user_csv(tmp_path)
    monkeypatch.chdir(tmp_path)
    state = PageRun(page.relative_to(ROOT).as_posix(), tiny_folders)
    installed = _installed()
    for argv in page_commands(page):
        shown = " ".join(argv)
        why = _why_parse_only(argv, state, installed)
        if why is not None:
            cli.build_parser().parse_args(argv[1:])
            state.parsed.append((shown, why))
            if "--out" in argv:
                state.not_written.append(argv[argv.index("--out") + 1])
            continue
        code = cli.main(_tiny(argv, tiny_folders))
        out, err = capsys.readouterr()
        assert code == 0, f"{page.name}: `{shown}` exited {code}: {err.strip()[-600:]}"
        state.ran.append(shown)
    assert len(state.ran) + len(state.parsed) == len(page_commands(page))
