"""The e2e-nlg built-in on tiny fake files in a temporary SOFTPROMPT_HOME: the E2E
release's CSV layout and BIG-bench's task.json (no package carries the real data; these
tests never need it and never go online)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from softprompt.data import builtin_datasets, e2e, load_dataset
from softprompt.errors import DataError

RELEASE = ("trainset.csv", "devset.csv", "testset_w_refs.csv")


def task_json(n: int = 20) -> bytes:
    """n meaning representations; even ones carry two references as a list, odd ones one
    string (BIG-bench allows both), and the last input repeats the first (merged)."""
    examples = []
    for i in range(n):
        mr = f"name[Place {i}], eatType[pub], area[riverside]"
        target = (
            [f"Place {i} is a pub.", f"Place {i} is a riverside pub."]
            if i % 2 == 0
            else f"Place {i} serves beer."
        )
        examples.append({"input": mr, "target": target})
    examples.append({"input": examples[0]["input"], "target": "Place 0 is by the river."})
    return json.dumps({"name": "e2e_nlg", "examples": examples}).encode()


def release_csv(split: str, header: str = "mr,ref") -> str:
    """Two inputs of the split, written as the release does (quoted, a comma inside the
    mr), the first input's references split by the second's, one pair repeated."""
    a, b = f'"name[{split} A], food[Thai]"', f'"name[{split} B], area[city centre]"'
    rows = [
        f"{a},{split} A serves Thai food.",
        f'{b},"{split} B is in the city centre, near the river."',
        f"{a},Thai food at {split} A.",
        f"{a},{split} A serves Thai food.",  # the same pair again: dropped
    ]
    return "\n".join([header, *rows]) + "\n"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SOFTPROMPT_HOME", str(tmp_path / "home"))

    def no_network(*args, **kwargs):
        raise AssertionError("e2e-nlg must never run a command or download")

    monkeypatch.setattr(subprocess, "run", no_network)
    return tmp_path / "home"


def _put_release(names=RELEASE, header: str = "mr,ref") -> None:
    e2e.e2e_folder().mkdir(parents=True, exist_ok=True)
    for name, split in zip(RELEASE, ("train", "dev", "test"), strict=True):
        if name in names:  # utf-8-sig: a BOM, as spreadsheet exports write, is read too
            (e2e.e2e_folder() / name).write_text(release_csv(split, header), encoding="utf-8-sig")


def _installed() -> bool:
    return {i.name: i for i in builtin_datasets()}["e2e-nlg"].installed


def test_release_csvs_give_the_release_splits_with_references_grouped(home):
    assert not _installed()
    _put_release()
    assert _installed()
    data = load_dataset("e2e-nlg")
    assert data.task == "generation" and data.labels == []
    for part, split in ((data.train, "train"), (data.validation, "dev"), (data.test, "test")):
        assert [(e.text, e.label) for e in part] == [
            (f"name[{split} A], food[Thai]", f"{split} A serves Thai food."),
            (f"name[{split} A], food[Thai]", f"Thai food at {split} A."),
            (f"name[{split} B], area[city centre]", f"{split} B is in the city centre, near the river."),
        ]  # fmt: skip
    assert load_dataset("e2e-nlg", seed=7) == data  # the release's split, whatever the seed


def test_release_csvs_win_over_a_task_json_beside_them(home):
    _put_release()
    e2e.cached_task_file().write_bytes(task_json())
    assert {e.text for e in load_dataset("e2e-nlg").test} == {
        "name[test A], food[Thai]",
        "name[test B], area[city centre]",
    }


def test_task_json_split_by_distinct_input_fixed_and_every_reference_a_row(home):
    e2e.cached_task_file().parent.mkdir(parents=True)
    e2e.cached_task_file().write_bytes(task_json())
    assert _installed()
    data = load_dataset("e2e-nlg")
    assert data.task == "generation" and data.labels == []
    inputs = [{e.text for e in part} for part in (data.train, data.validation, data.test)]
    assert [len(s) for s in inputs] == [16, 2, 2]  # 80/10/10 of 20 distinct inputs
    assert (
        not (inputs[0] & inputs[1]) and not (inputs[0] & inputs[2]) and not (inputs[1] & inputs[2])
    )
    rows = data.train + data.validation + data.test
    assert len(rows) == 10 * 2 + 10 + 1  # two refs for even inputs, one for odd, +1 merged
    place0 = sorted(e.label for e in rows if e.text.startswith("name[Place 0]"))
    assert place0 == [
        "Place 0 is a pub.",
        "Place 0 is a riverside pub.",
        "Place 0 is by the river.",
    ]
    assert load_dataset("e2e-nlg", seed=7) == data  # the built-in seed, whatever the caller's


def test_missing_files_one_line_naming_the_folder_and_the_files(home):
    with pytest.raises(DataError) as caught:
        load_dataset("e2e-nlg")
    message = str(caught.value)
    assert "\n" not in message and "pip" not in message and "bigbench==" not in message
    assert f"in {home / 'datasets' / 'e2e-nlg'}/" in message
    assert "trainset.csv, devset.csv, testset_w_refs.csv (columns mr, ref)" in message
    assert "task.json" in message
    assert message.endswith(
        f"mkdir -p {home}/datasets/e2e-nlg && cp trainset.csv devset.csv testset_w_refs.csv "
        f"{home}/datasets/e2e-nlg/"
    )


def test_some_csvs_missing_names_the_missing_ones(home):
    _put_release(names=("devset.csv", "testset_w_refs.csv"))
    assert not _installed()
    with pytest.raises(DataError, match=r"it has devset.csv, testset_w_refs.csv but not trainset"):
        load_dataset("e2e-nlg")


@pytest.mark.parametrize("header", ["MR", "mr,reference"])
def test_a_csv_without_mr_or_ref_column_is_named(home, header):
    _put_release(header=header)
    with pytest.raises(DataError) as caught:
        load_dataset("e2e-nlg")
    message = str(caught.value)
    assert (
        "trainset.csv: needs the E2E release's columns mr and ref, found "
        + header.replace(",", ", ")
        in message
        and "\n" not in message
    )


def test_an_empty_reference_is_named_with_its_line(home):
    _put_release()
    (e2e.e2e_folder() / "devset.csv").write_text('mr,ref\n"name[X]",X is nice.\n"name[Y]",\n')
    with pytest.raises(DataError, match=r"devset.csv:3: empty mr or ref"):
        load_dataset("e2e-nlg")


def test_a_bad_task_file_is_named(home):
    e2e.cached_task_file().parent.mkdir(parents=True)
    e2e.cached_task_file().write_text('{"examples": [{"input": "x"}]}')
    with pytest.raises(DataError, match="not a BIG-bench task.json"):
        load_dataset("e2e-nlg")
