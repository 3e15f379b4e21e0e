"""Config and input bounds (issue 17): YAML alias bombs, deep JSON, devices this machine
lacks, prompts longer than the backbone's positions, label words shared by two classes.

Each case is one ConfigError line (exit 2 from the CLI) before any model work."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
import torch

from softprompt.cli import main
from softprompt.config import build_run_config, load_yaml
from softprompt.data import Example
from softprompt.device import resolve_device
from softprompt.errors import ConfigError
from softprompt.search.scorer import Verbalizer
from softprompt.validate import (
    MAX_CONFIG_BYTES,
    check_expanded_size,
    json_depth,
    load_json_bounded,
    position_limit,
)

BOMB = "\n".join(
    [f"l0: &l0 [{', '.join(['lol'] * 9)}]"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    + ["task:", "  verbalizer:", "    positive: *l8", "    negative: *l8"]
)


def _one_error_line(capsys, *needles: str) -> str:
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr  # progress bars aside
    err = errors[0]
    for needle in needles:
        assert needle in err, err
    return err


# -- YAML ----------------------------------------------------------------------------


def test_yaml_alias_bomb_is_refused_before_anything_walks_it(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB, encoding="utf-8")  # 9^9 strings once expanded, a few hundred bytes
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"--config .*bomb\.yaml: expands to more than"):
        load_yaml(path)
    assert time.perf_counter() - start < 5


def test_alias_bomb_given_as_a_dict_is_refused_by_build_run_config():
    row = ["lol"] * 9
    for _ in range(8):
        row = [row] * 9  # shared lists: what yaml.safe_load makes of aliases
    with pytest.raises(ConfigError, match="config: expands to more than"):
        build_run_config({"task": {"verbalizer": {"positive": row, "negative": row}}})


def test_yaml_alias_to_its_own_anchor_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("task: &a\n  verbalizer: *a\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="contains itself"):
        load_yaml(path)


def test_config_file_over_the_size_bound_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("backbone: x\n# " + "x" * MAX_CONFIG_BYTES + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bytes .*at most"):
        load_yaml(path)


def test_ordinary_anchors_still_load(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "method: &m {name: soft-prompt, n_tokens: 4}\n"
        "tasks:\n"
        "  - {name: a, data: movie-sentiment, method: *m}\n"
        "  - {name: b, data: movie-sentiment, method: *m}\n",
        encoding="utf-8",
    )
    config = build_run_config(load_yaml(path))
    assert [t.method["n_tokens"] for t in config.tasks] == [4, 4]


def test_expanded_size_counts_shared_parts_each_time():
    shared = list(range(10))
    check_expanded_size({"a": [shared] * 10}, "x", limit=200)
    with pytest.raises(ConfigError, match="x: expands"):
        check_expanded_size({"a": [shared] * 10}, "x", limit=100)


# -- JSON ----------------------------------------------------------------------------


@pytest.mark.parametrize("deep", ["[" * 20000 + "]" * 20000, '{"a":' * 5000 + "1" + "}" * 5000])
def test_deep_json_is_one_config_error(deep):
    with pytest.raises(ConfigError, match=r"--verbalizer: JSON nested \d+ levels deep"):
        load_json_bounded(deep, "--verbalizer")


def test_bounded_json_reads_ordinary_values_and_names_bad_ones():
    text = '{"positive": [" good", " [great]{"], "negative": " bad\\""}'
    assert json_depth(text) == 2  # brackets inside strings do not count
    assert load_json_bounded(text, "--verbalizer")["negative"] == ' bad"'
    with pytest.raises(ConfigError, match="--task: not valid JSON"):
        load_json_bounded("{positive", "--task")
    with pytest.raises(ConfigError, match="characters of JSON"):
        load_json_bounded('"' + "x" * 100 + '"', "--task", max_chars=50)


def test_json_depth_is_linear_on_escaped_quotes():
    """A regex for JSON strings backtracks quadratically on this (20k: 16 s); the scan must not."""
    text = '"' + '\\"' * 400_000  # one string that never closes, 800k characters
    start = time.perf_counter()
    assert json_depth(text) == 0
    assert json_depth('["[", "\\\\", ["]"]]') == 2  # an escaped backslash ends before "
    assert time.perf_counter() - start < 2


@pytest.fixture
def toy_csv(tmp_path) -> Path:
    path = tmp_path / "toy.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(24):
            writer.writerow([f"good fun {i}" if i % 2 else f"bad dull {i}", "ab"[i % 2]])
    return path


def test_search_with_deep_verbalizer_json_exits_2(toy_csv, llama_folder, tmp_path, capsys):
    deep = "[" * 20000 + "]" * 20000
    argv = ["search", "--dataset", str(toy_csv), "--backbone", str(llama_folder)]
    assert main([*argv, "--verbalizer", deep, "--out", str(tmp_path / "s")]) == 2
    _one_error_line(capsys, "--verbalizer", "nested")


def test_train_with_deep_verbalizer_json_exits_2(toy_csv, llama_folder, tmp_path, capsys):
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    argv = ["train", "--dataset", str(toy_csv), "--backbone", str(llama_folder)]
    assert main([*argv, "--verbalizer", deep, "--out", str(tmp_path / "r")]) == 2
    _one_error_line(capsys, "--verbalizer", "nested")


@pytest.mark.parametrize("raw", ['{"labels": ' * 5000 + "1" + "}" * 5000, "{labels"])
def test_import_peft_task_json_is_checked_first_in_one_line(raw, llama_folder, tmp_path, capsys):
    argv = ["import-peft", str(tmp_path / "no-adapter"), "--backbone", str(llama_folder)]
    assert main([*argv, "--task", raw, "--out", str(tmp_path / "p.safetensors")]) == 2
    _one_error_line(capsys, "--task")


# -- devices ---------------------------------------------------------------------------


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("device", ["cuda", "mps", "tpu", "cuda:0"])
def test_serve_on_a_device_this_machine_lacks_exits_2(
    device, no_accelerators, llama_folder, tmp_path, capsys
):
    argv = ["serve", "--store", str(tmp_path / "store"), "--backbone", str(llama_folder)]
    assert main([*argv, "--device", device]) == 2
    _one_error_line(capsys, "--device", device)
    assert not (tmp_path / "store").exists()  # refused before the store is opened


def test_cuda_index_past_the_visible_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"train.device: cuda:3 names no GPU here.*cuda:0"):
        resolve_device("cuda:3")
    with pytest.raises(ConfigError, match="cuda:x names no GPU"):
        resolve_device("cuda:x")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_train_on_a_device_this_machine_lacks_exits_2(
    no_accelerators, toy_csv, llama_folder, tmp_path, capsys
):
    argv = ["train", "--dataset", str(toy_csv), "--backbone", str(llama_folder)]
    assert main([*argv, "--device", "mps", "--out", str(tmp_path / "r")]) == 2
    _one_error_line(capsys, "train.device", "mps")


# -- positions -------------------------------------------------------------------------


def test_position_limit_is_the_learned_table_and_none_for_rope(bert, gpt2, llama):
    assert position_limit(bert.model) == 512
    assert position_limit(gpt2.model) == 512
    assert position_limit(llama.model) is None  # rotary: no table to run off


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_prompt_past_the_backbones_positions_is_refused(name, backbones, make_model):
    backbone = backbones[f"tiny_{name}"]
    with pytest.raises(ConfigError, match=r"has 512 positions but a row can need \d+"):
        make_model(backbone, n_tokens=4096)
    template = " ".join(["word"] * 600) + " {text}"
    with pytest.raises(ConfigError, match="512 positions.*shorten task.template"):
        make_model(backbone, task={"template": template})


def test_largest_accepted_prompt_runs_on_the_longest_text(bert, make_model):
    """The check is exact: one token fewer than refused runs a row of maximal text."""
    task = {"max_text_tokens": 40}
    with pytest.raises(ConfigError, match="512 positions") as refused:
        make_model(bert, n_tokens=500, task=task)
    need = int(str(refused.value).split("can need ")[1].split()[0])
    model = make_model(bert, n_tokens=500 - (need - 512), task=task)
    with pytest.raises(ConfigError):
        make_model(bert, n_tokens=501 - (need - 512), task=task)
    long_text = " ".join(["good"] * 300)
    with torch.no_grad():
        model(model.collate([Example(long_text, "positive")]))


def test_rope_backbone_takes_long_prompts(llama, make_model):
    make_model(llama, n_tokens=600)


def test_train_with_too_many_tokens_on_an_encoder_exits_2(toy_csv, bert_folder, tmp_path, capsys):
    argv = ["train", "--dataset", str(toy_csv), "--backbone", str(bert_folder), "--steps", "2"]
    assert main([*argv, "--n-tokens", "4096", "--no-baseline", "--out", str(tmp_path)]) == 2
    _one_error_line(capsys, "512 positions", "--n-tokens")


# -- verbalizers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "verbalizer",
    [
        {"negative": [" good"], "positive": [" good"]},
        {"negative": [" bad", " good"], "positive": [" great", " good"]},
    ],
)
def test_label_words_shared_by_two_classes_are_refused(verbalizer, llama, make_model):
    with pytest.raises(ConfigError, match=r"'negative' and 'positive' share .*' good'"):
        make_model(llama, task={"verbalizer": verbalizer})


def test_distinct_label_words_are_accepted(llama, make_model):
    model = make_model(llama, task={"verbalizer": {"negative": [" bad"], "positive": [" good"]}})
    assert len(model.task.word_ids) == 2


def test_train_with_indistinct_label_words_exits_2(toy_csv, llama_folder, tmp_path, capsys):
    argv = ["train", "--dataset", str(toy_csv), "--backbone", str(llama_folder), "--steps", "2"]
    verbalizer = '{"a": [" good"], "b": [" good"]}'
    assert main([*argv, "--verbalizer", verbalizer, "--out", str(tmp_path / "r")]) == 2
    _one_error_line(capsys, "task.verbalizer", "'a' and 'b'", "' good'")


def test_search_refuses_label_words_shared_by_two_classes(llama):
    words = {"negative": [" bad", " good"], "positive": [" good"]}
    with pytest.raises(ConfigError, match=r"'negative' and 'positive' share .*' good'"):
        Verbalizer.build(["negative", "positive"], words, llama.tokenizer)
    assert Verbalizer.build(["negative", "positive"], None, llama.tokenizer).word_ids
