"""benchmarks/search_table.py: units in run order, resume refuses other settings, partial tables."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "search_table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("search_table_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(tmp_path, **kw) -> argparse.Namespace:
    base = dict(datasets=["a", "b"], backbone="m", methods=["x", "y"], inits=["vocab"],
                budget=8, seeds=[0, 1], examples=4, test_examples=6, soft_steps=3, soft_batch=2,
                threads=1, render=False, out=str(tmp_path / "t.json"), only="all",
                also=[])  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_first_seed_then_soft_then_other_seeds(table, tmp_path):
    order = table.units(_args(tmp_path))
    assert order == [
        ("a", "manual"), ("b", "manual"),
        ("a", "search", "x", 0), ("a", "search", "y", 0),
        ("b", "search", "x", 0), ("b", "search", "y", 0),
        ("a", "soft", "vocab"), ("b", "soft", "vocab"),
        ("a", "search", "x", 1), ("a", "search", "y", 1),
        ("b", "search", "x", 1), ("b", "search", "y", 1),
    ]  # fmt: skip
    assert all(u[1] != "soft" for u in table.units(_args(tmp_path, soft_steps=0)))
    assert table.units(_args(tmp_path, only="soft")) == [
        ("a", "soft", "vocab"),
        ("b", "soft", "vocab"),
    ]
    searches = table.units(_args(tmp_path, only="search"))
    assert searches == [u for u in order if u[1] != "soft"]


def test_best_hard_prompt_reads_the_other_process_file(table, tmp_path):
    other = tmp_path / "search.json"
    prompt = {"template": "T {text}", "validation": 0.5, "validation_loss": 1.0, "test": 0.6}
    found = {**prompt, "template": "Found {text}", "validation": 0.9, "evaluations": 8}
    units = {"a|manual": {"prompts": [prompt]}, "a|search|x|0": found}
    other.write_text(json.dumps({"units": units}))
    done = table.with_also({}, _args(tmp_path, also=[str(other)]))
    assert table.best_hard(done, "a") == ("Found {text}", 0.9, 1)


def test_resume_keeps_done_units_and_refuses_other_settings(table, tmp_path):
    args = _args(tmp_path)
    done = {"a|manual": {"prompts": []}}
    Path(args.out).write_text(json.dumps({"args": vars(args), "units": done}))
    assert table.load_done(args) == done
    assert table.load_done(_args(tmp_path, seeds=[0, 1, 2])) == done  # more seeds: go on
    with pytest.raises(SystemExit, match="other settings"):
        table.load_done(_args(tmp_path, budget=9))


def test_table_of_a_cut_run_shows_seeds_done_and_soft_share_kept(table, tmp_path):
    args = _args(tmp_path, datasets=["a"])
    prompt = {"template": "T {text}", "validation": 0.5, "validation_loss": 1.0, "test": 0.6}
    done = {
        "a|manual": {"prompts": [prompt, {**prompt, "validation": 0.75, "test": 0.4}]},
        "a|search|x|0": {**prompt, "evaluations": 8},
        "a|search|x|1": {**prompt, "test": 0.8, "evaluations": 7},
        "a|soft|vocab": {"params": 11520, "test": 0.8, "template": "T {text}", "steps": 3, "batch": 2,
                         "projections": {"cosine": {"tokens": "ab", "test": 0.6}}},
    }  # fmt: skip
    text = table.table(done, args)
    assert "| a | zero-shot template | `'T {text}'` | 0.500 | 0.600 | 1 |" in text
    assert "| best of 3 manual prompts | `'T {text}'` | 0.750 | 0.400 |" in text
    assert "| x (2 seeds) |" in text and "| 0.700 (0.600-0.800) | 8/8 |" in text
    assert "| y" not in text  # not run yet
    assert "| 0.800 | 3 steps x 2 rows |" in text
    assert "| 0.600 (75% of soft) |" in text
