"""Run configs and the command line: errors name the key or flag, commands run end to end
on a tiny backbone saved as an HF folder and a small CSV."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from softprompt import cli
from softprompt.backbones import load_backbone
from softprompt.config import RunConfig, build_run_config
from softprompt.errors import ConfigError
from softprompt.methods import available_methods
from softprompt.model import PromptModel, load_prompt_meta

# --- build_run_config ----------------------------------------------------------------


def test_defaults():
    config = build_run_config({})
    assert config == RunConfig()
    assert config.method["name"] == "soft-prompt"


def test_unknown_top_level_keys_are_all_named():
    with pytest.raises(ConfigError) as info:
        build_run_config({"trian": {}, "bogus": 1, "out": "x"})
    assert "bogus" in str(info.value) and "trian" in str(info.value)


@pytest.mark.parametrize("section", ["train", "data"])
def test_unknown_section_keys_are_all_named(section):
    with pytest.raises(ConfigError) as info:
        build_run_config({section: {"stepz": 1, "lrr": 2}})
    assert f"{section}.stepz" in str(info.value) and f"{section}.lrr" in str(info.value)


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("steps", "abc", "train.steps"),
        ("lr", "fast", "train.lr"),
        ("bf16", "maybe", "train.bf16"),
        ("batch_size", "4.5", "train.batch_size"),
    ],
)
def test_bad_types_name_the_key(key, value, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        build_run_config({"train": {key: value}})
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    "values,key",
    [
        ({"train": {"steps": 0}}, "train.steps"),
        ({"train": {"lr": -1.0}}, "train.lr"),
        ({"train": {"schedule": "step"}}, "train.schedule"),
    ],
)
def test_bad_values_name_the_key(values, key):
    with pytest.raises(ConfigError, match=key):
        build_run_config(values)


def test_strings_are_coerced_and_shorthands_expand():
    config = build_run_config(
        {
            "train": {"steps": "12", "lr": "3e-2", "bf16": "yes"},
            "data": "x.csv",
            "method": "none",
            "baseline": "off",
        }
    )
    assert (config.train.steps, config.train.lr, config.train.bf16) == (12, 0.03, True)
    assert (
        config.data.source == "x.csv"
        and config.method == {"name": "none"}
        and config.baseline is False
    )


def test_method_options_without_a_name_refine_the_default_method():
    config = build_run_config({"method": {"n_tokens": 3}})
    assert config.method["name"] == "soft-prompt" and config.method["n_tokens"] == 3


def test_method_of_the_wrong_type_is_named():
    with pytest.raises(ConfigError, match="method"):
        build_run_config({"method": 3})


def test_unknown_task_key_is_named():
    with pytest.raises(ConfigError, match="task.templat"):
        build_run_config({"task": {"templat": "{text} is"}})


def test_bad_baseline_message_names_the_key_cleanly():
    with pytest.raises(ConfigError) as info:
        build_run_config({"baseline": "maybe"})
    assert str(info.value).startswith("baseline: expected bool")


# --- CLI errors ----------------------------------------------------------------------


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--steps", "abc"], "--steps"),
        (["--lr", "fast"], "--lr"),
        (["--verbalizer", "{not json"], "--verbalizer"),
        (["--n-tokens", "1.5"], "--n-tokens"),
        (["--config", "missing.yaml"], "--config"),
        (["--backbone", "/nonexistent/backbone"], "backbone"),
        # the method is checked before any backbone loads
        (["--method", "bogus-method", "--backbone", "/nonexistent/backbone"], "method.name"),
        (["--batch-size", "0"], "train.batch_size"),
    ],
)
def test_train_bad_input_exits_2_naming_the_flag(capsys, tmp_path, monkeypatch, argv, flag):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(capsys, "train", *argv)
    assert code == 2
    assert err.startswith("softprompt train: error:") and flag in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_config_file_errors(capsys, tmp_path):
    bad_key = tmp_path / "run.yaml"
    bad_key.write_text("train:\n  steps: 3\n  stpes: 4\nout: x\n")
    code, _, err = _main(capsys, "train", "--config", str(bad_key))
    assert code == 2 and "train.stpes" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    code, _, err = _main(capsys, "train", "--config", str(broken))
    assert code == 2 and "not valid YAML" in err
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    code, _, err = _main(capsys, "train", "--config", str(listing))
    assert code == 2 and "mapping" in err


def test_unknown_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--stepz", "3"])
    assert info.value.code == 2
    assert "--stepz" in capsys.readouterr().err


def test_info_on_a_bad_file_exits_2(capsys, tmp_path):
    code, _, err = _main(capsys, "info", str(tmp_path / "none.safetensors"))
    assert code == 2 and "no such prompt file" in err
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 40)
    code, _, err = _main(capsys, "info", str(tmp_path / "bad.safetensors"))
    assert code == 2 and "not a readable prompt file" in err


def test_listing_commands(capsys):
    code, out, _ = _main(capsys, "methods")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == available_methods()
    code, out, _ = _main(capsys, "backbones")
    assert code == 0 and "| smollm2-135m |" in out and "| minilm-l6 |" in out
    code, out, _ = _main(capsys, "datasets")
    assert code == 0 and all(
        f"| {n} |" in out for n in ("movie-sentiment", "newsgroups20", "election-tweets")
    )


def test_module_entry_point_exit_code(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "softprompt.cli", "info", str(tmp_path / "x.safetensors")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "no such prompt file" in proc.stderr


def test_info_prints_method_and_backbone(capsys, make_model, llama, tmp_path):
    path = make_model(
        llama, n_tokens=3, task={"verbalizer": {"negative": " bad", "positive": " good"}}
    ).save(tmp_path / "p.safetensors", dataset="toy")
    code, out, _ = _main(capsys, "info", str(path))
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["method"].split()[1] == "soft-prompt" and '"n_tokens": 3' in lines["method"]
    assert f"tiny-llama (fingerprint {llama.fingerprint})" in lines["backbone"]
    assert "toy" in lines["dataset"] and "[3, 32]" in lines["tensors"]
    assert '" bad"' in lines["verbalizer"]
    code, out, _ = _main(capsys, "info", "--json", str(path))
    assert code == 0 and json.loads(out) == load_prompt_meta(path)


# --- end to end on a tiny backbone folder ---------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_backbone_folder, small_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    argv = ["train", "--backbone", str(tiny_backbone_folder), "--dataset", str(small_csv), "--method", "soft-prompt",
            "--n-tokens", "3", "--steps", "4", "--eval-every", "2", "--batch-size", "4", "--lr", "0.1",
            "--template", "review : {text} sentiment :", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    return out


def test_train_end_to_end_writes_every_output(trained, tiny_backbone_folder, llama):
    names = {p.name for p in trained.iterdir()}
    expected = {
        "prompt.safetensors",
        "metrics.jsonl",
        "curves.png",
        "report.md",
        "report.json",
        "checkpoint.safetensors",
    }
    assert expected <= names
    assert (trained / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4]
    report = json.loads((trained / "report.json").read_text())
    assert [r["name"].split()[0] for r in report["rows"]] == ["zero-shot", "soft-prompt"]
    assert report["config"]["train"]["steps"] == 4 and report["config"]["method"]["n_tokens"] == 3
    assert "soft-prompt (best of step" in (trained / "report.md").read_text()
    meta = load_prompt_meta(trained / "prompt.safetensors")
    assert meta["backbone"]["name"] == str(tiny_backbone_folder)
    assert meta["backbone"]["fingerprint"] == llama.fingerprint  # same weights, same fingerprint
    assert meta["task"]["template"] == "review : {text} sentiment :"
    assert PromptModel.load(trained / "prompt.safetensors", llama).method.embeddings.shape == (
        3,
        32,
    )


def test_eval_and_predict_commands(capsys, trained, small_csv):
    prompt = str(trained / "prompt.safetensors")
    code, out, _ = _main(
        capsys, "eval", prompt, "--dataset", str(small_csv), "--split", "validation"
    )
    assert code == 0
    result = json.loads(out)
    assert (
        result["split"] == "validation" and result["examples"] == 4 and 0 <= result["accuracy"] <= 1
    )
    code, out, _ = _main(capsys, "predict", prompt, "a good movie", "so bad")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == ["a good movie", "so bad"]
    assert all(
        r["label"] in ("negative", "positive") and abs(sum(r["scores"].values()) - 1) <= 2e-4
        for r in rows
    )


def test_export_flattens_a_p_tuning_prompt(capsys, tiny_backbone_folder, small_csv, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--backbone", str(tiny_backbone_folder), "--dataset", str(small_csv), "--method", "p-tuning",
            "--n-tokens", "3", "--steps", "2", "--eval-every", "2", "--batch-size", "4",
            "--no-baseline", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    capsys.readouterr()
    flat = tmp_path / "flat.safetensors"
    code, printed, err = _main(
        capsys, "export", str(out / "prompt.safetensors"), "--out", str(flat)
    )
    assert code == 0, err
    assert printed.startswith(f"{flat}: ") and "(was " in printed
    assert load_prompt_meta(flat)["method"]["name"] == "soft-prompt"
    code, _, err = _main(capsys, "predict", str(flat), "a good movie")
    assert code == 0, err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a prompt")
    code, _, err = _main(capsys, "export", str(bad), "--out", str(tmp_path / "x.safetensors"))
    assert code == 2 and "not a readable prompt file" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_eval_defaults_to_the_training_file(capsys, trained):
    code, out, err = _main(capsys, "eval", str(trained / "prompt.safetensors"))
    assert code == 0, err


def test_method_option_flag_without_method_flag(capsys, tiny_backbone_folder, small_csv, tmp_path):
    argv = ["train", "--backbone", str(tiny_backbone_folder), "--dataset", str(small_csv), "--n-tokens", "2",
            "--steps", "2", "--eval-every", "2", "--batch-size", "4", "--no-baseline", "--out", str(tmp_path / "o")]  # fmt: skip
    code, _, err = _main(capsys, *argv)
    assert code == 0, err


def test_unknown_task_key_in_yaml_exits_2(capsys, tiny_backbone_folder, small_csv, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"backbone: {tiny_backbone_folder}\ndata: {small_csv}\ntask:\n  templat: '{{text}} is'\n"
    )
    code, _, err = _main(capsys, "train", "--config", str(config), "--out", str(tmp_path / "o"))
    assert code == 2 and "task.templat" in err


def test_template_flag_reads_shell_escapes_like_yaml(tmp_path):
    """`--template "Review: {text}\\nSentiment:"` typed in a shell carries a backslash and an
    n; it must mean the newline the same template means in a YAML file."""
    parser = cli.build_parser()
    args = parser.parse_args(
        ["train", "--template", r"Review: {text}\nSentiment:\t\\n", "--init-text", r"a\nb"]
    )
    config = cli._config_from_args(args)
    assert config.task["template"] == "Review: {text}\nSentiment:\t\\n"
    assert config.method["init_text"] == "a\nb"
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text('task:\n  template: "Review: {text}\\nSentiment:"\n')
    from_yaml = cli._config_from_args(parser.parse_args(["train", "--config", str(yaml_file)]))
    assert from_yaml.task["template"] == "Review: {text}\nSentiment:"


def test_multitask_yaml_trains_every_task_and_predict_serves_them_together(
    capsys, tmp_path, monkeypatch, tiny_backbone_folder
):
    """A YAML list of tasks -> one run, a prompt file per task; `predict --task` answers
    TASK=TEXT inputs from several prompt files in one mixed batch."""
    monkeypatch.chdir(tmp_path)
    for name, rows in [
        ("a.csv", ["good,positive", "bad,negative"]),
        ("b.csv", ["team,sports", "vote,politics"]),
    ]:
        lines = [f"{row.split(',')[0]} {i},{row.split(',')[1]}" for i in range(6) for row in rows]
        (tmp_path / name).write_text("text,label\n" + "\n".join(lines) + "\n")
    (tmp_path / "multi.yaml").write_text(
        f"backbone: {tiny_backbone_folder}\n"
        "tasks:\n"
        "  - {name: sent, data: a.csv, method: {name: soft-prompt, n_tokens: 2}}\n"
        "  - {name: topic, data: b.csv, method: {name: prefix-tuning, n_tokens: 2, hidden: 8}}\n"
        "train: {steps: 2, batch_size: 4, eval_every: 2, eval_examples: 4, warmup_steps: 0}\n"
        "out: run\n"
    )
    code, out, err = _main(capsys, "train", "--config", "multi.yaml", "--no-baseline")
    assert code == 0, err
    assert "| sent |" in out and "| topic |" in out
    sent, topic = (
        tmp_path / "run" / "sent" / "prompt.safetensors",
        tmp_path / "run" / "topic" / "prompt.safetensors",
    )
    assert sent.exists() and topic.exists()
    code, out, err = _main(
        capsys, "predict", "--backbone", str(tiny_backbone_folder), "--task", f"sent={sent}", "--task", f"topic={topic}",
        "sent=a good film", "topic=the vote", "sent=bad",
    )  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(r["task"], r["text"]) for r in lines] == [
        ("sent", "a good film"),
        ("topic", "the vote"),
        ("sent", "bad"),
    ]
    assert set(lines[1]["scores"]) == {"politics", "sports"}


def test_multitask_config_errors_name_the_task(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for body, needle in [
        ("tasks: {a: 1}\n", "tasks: expected a non-empty list"),
        ("tasks:\n  - {name: x}\n", "tasks[0].data"),
        (
            "tasks:\n  - {data: a.csv, method: {name: soft-prompt, n_tokens: ten}}\n",
            "tasks[0].method.n_tokens",
        ),
        ("tasks:\n  - {name: x, data: a.csv}\n  - {name: x, data: b.csv}\n", "appears twice"),
        ("tasks:\n  - {name: x, data: a.csv, metod: none}\n", "tasks[0]: unknown key(s) metod"),
    ]:
        (tmp_path / "bad.yaml").write_text(body)
        code, out, err = _main(capsys, "train", "--config", "bad.yaml")
        assert code == 2 and needle in err, (body, err)
        assert "Traceback" not in err


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--device", "tpu"], "train.device"),
        (["--sampler", "round-robin"], "train.sampler"),
        (["--temperature", "0"], "train.temperature"),
    ],
)
def test_device_and_sampler_errors_name_the_key(capsys, tmp_path, monkeypatch, flags, needle):
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(capsys, "train", *flags)
    assert code == 2 and needle in err and "Traceback" not in err


def test_task_labels_that_miss_a_data_label_are_refused(toy_dataset, llama):
    from softprompt.api import build_model

    with pytest.raises(ConfigError, match="task.labels: dataset 'toy' has labels \\['positive'\\]"):
        build_model(llama, toy_dataset, {"name": "none"}, {"labels": ["negative", "neutral"]})


def test_eval_several_prompt_files_reports_the_ensemble(
    capsys, trained, tiny_backbone_folder, tmp_path
):
    first = trained / "prompt.safetensors"
    model = PromptModel.load(first, load_backbone(str(tiny_backbone_folder)))
    with torch.no_grad():
        model.method.embeddings.mul_(-1.0)
    second = model.save(tmp_path / "flipped.safetensors", **{
        k: v for k, v in load_prompt_meta(first).items() if k in ("run", "dataset")
    })  # fmt: skip
    code, out, err = _main(capsys, "eval", str(first), str(second), "--split", "validation")
    assert code == 0, err
    result = json.loads(out)
    assert [m["prompt"] for m in result["members"]] == [str(first), str(second)]
    alone = json.loads(_main(capsys, "eval", str(first), "--split", "validation")[1])
    assert result["members"][0]["accuracy"] == alone["accuracy"]
    assert {"ensemble_mean", "ensemble_vote"} <= result.keys()


def test_info_on_an_exported_prompt_says_what_it_was_flattened_from(
    capsys, make_model, llama, tmp_path
):
    from softprompt.recipes.export import export_prompt

    path = make_model(llama, "p-tuning", n_tokens=3, hidden=8).save(tmp_path / "p.safetensors")
    out_path = export_prompt(path, tmp_path / "flat.safetensors", llama)
    code, out, err = _main(capsys, "info", str(out_path))
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "soft-prompt" in lines["method"] and "exported from p-tuning" in lines["method"]


def test_info_on_a_peft_export_describes_the_adapter(capsys, make_model, llama, tmp_path):
    from softprompt.interop.peft import export_peft

    export_peft(make_model(llama, n_tokens=3), tmp_path / "adapter")
    code, out, err = _main(capsys, "info", str(tmp_path / "adapter"))
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "PEFT adapter" in lines["file"] and "PROMPT_TUNING" in lines["peft_type"]
    assert "base_model" in lines and "virtual_tokens" in lines
    assert "tiny-llama" in lines["exported_from"] and llama.fingerprint in lines["exported_from"]
    assert "import-peft" in out  # how to use it here
    code, out, _ = _main(capsys, "info", "--json", str(tmp_path / "adapter"))
    assert code == 0 and json.loads(out)["adapter_config"]["peft_type"] == "PROMPT_TUNING"
