"""benchmarks/fewshot_table.py: a rerun with other columns keeps the measured ones."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def table():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling fewshot_recipes
    try:
        spec = importlib.util.spec_from_file_location(
            "fewshot_table_bench", BENCHMARKS / "fewshot_table.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def _cell(dataset, shots, methods, seconds=1.0, setup="3 seeds"):
    return {"dataset": dataset, "shots": shots, "seconds": seconds, "methods": methods,
            "setup": setup}  # fmt: skip


def test_merge_adds_columns_and_keeps_measured_ones(table):
    old = [_cell("a", 16, {"dart": {"mean": 0.8}, "lora": {"mean": 0.6}}, 60.0)]
    new = _cell("a", 16, {"lora": {"mean": 0.7}, "pet-ensemble": {"mean": 0.9}}, 30.0)
    merged = table.merge(old, new)
    assert len(merged) == 1
    means = {name: row["mean"] for name, row in merged[0]["methods"].items()}
    assert means == {"dart": 0.8, "lora": 0.7, "pet-ensemble": 0.9}
    assert merged[0]["seconds"] == 90.0
    assert old[0]["methods"]["lora"] == {"mean": 0.6}  # the old record is not changed


def test_merge_appends_a_new_cell_and_names_a_different_setup(table):
    old = [_cell("a", 16, {"dart": {"mean": 0.8}}, setup=None)]
    assert [c["shots"] for c in table.merge(old, _cell("a", 8, {}))] == [16, 8]
    first = _cell("a", 16, {"dart": {"mean": 0.8}}, setup="3 seeds")
    rerun = _cell("a", 16, {"pet": {"mean": 0.6, "setup": "1 seed"}}, setup="1 seed")
    merged = table.merge([first], rerun)
    assert merged[0]["setup"] == "3 seeds (dart); 1 seed (pet)"
    again = table.merge(merged, _cell("a", 16, {"pet": {"mean": 0.7, "setup": "3 seeds"}}))
    assert again[0]["setup"] == "3 seeds"  # a column rerun replaces its own setup, no pile-up
    assert again[0]["methods"]["dart"]["setup"] == "3 seeds"


def test_pet_summary_is_mean_and_sample_sd(table):
    recipes = sys.modules["fewshot_recipes"]
    row = recipes.summary([0.66, 0.67, 0.68])
    assert row["mean"] == pytest.approx(0.67) and row["sd"] == pytest.approx(0.01)
    assert row["seeds"] == 3 and row["min"] == 0.66 and row["max"] == 0.68


def test_setup_names_a_validation_schedule_other_than_the_default(table):
    from argparse import Namespace

    old = Namespace(seeds=[0, 1, 2], steps=30, test_limit=100)  # a run recorded before
    assert table.setup(old) == "3 seeds, 30 steps, 100 test rows"
    default = Namespace(**vars(old), eval_every=0, eval_examples=300)
    assert table.setup(default) == table.setup(old) and table.schedule(default) == ""
    once = Namespace(**{**vars(default), "seeds": [0], "eval_every": 30, "eval_examples": 20})
    assert table.setup(once) == (
        "1 seeds, 30 steps, 100 test rows, no step choice (validated once, at the last step)"
    )
    assert table.schedule(once) == "-e30x20"  # its own unit folders
    fewer = Namespace(**{**vars(default), "eval_examples": 100})
    assert table.setup(fewer).endswith("best of every 10 steps on 100 validation rows")
