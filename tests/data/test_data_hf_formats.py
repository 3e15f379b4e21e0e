"""Data the ecosystem's way: `datasets` folders and objects, Parquet, JSON arrays.

Each format gets the checks CSV gets (missing column, unknown label, empty input) and
says how to install the `hf` extra when `datasets` / `pyarrow` are missing.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest

from softprompt.data import Example, load_dataset
from softprompt.errors import ConfigError, DataError

datasets = pytest.importorskip("datasets")
parquet = pytest.importorskip("pyarrow.parquet")

TEXTS = [f"review number {i}" for i in range(40)]
CLASSES = datasets.ClassLabel(names=["neg", "pos"])


def labelled(n: int = 40, offset: int = 0) -> datasets.Dataset:
    """n rows whose integer labels are a ClassLabel (as hub datasets store them)."""
    features = datasets.Features({"text": datasets.Value("string"), "label": CLASSES})
    rows = {"text": [f"review {offset + i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
    return datasets.Dataset.from_dict(rows, features=features)


def all_rows(data) -> list[Example]:
    return data.train + data.validation + data.test


# --- datasets folders (save_to_disk) ---------------------------------------------


def test_dataset_folder_gives_label_names_and_carved_splits(tmp_path):
    labelled().save_to_disk(str(tmp_path / "reviews"))
    data = load_dataset(str(tmp_path / "reviews"))
    assert data.labels == ["neg", "pos"] and data.name == "reviews"
    assert (len(data.train), len(data.validation), len(data.test)) == (32, 4, 4)
    assert Counter(e.label for e in data.test) == {"neg": 2, "pos": 2}
    assert Example("review 1", "pos") in all_rows(data)


def test_dataset_dict_folder_keeps_its_splits(tmp_path):
    splits = {"train": labelled(20), "dev": labelled(4, 100), "test": labelled(6, 200)}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dd"))
    data = load_dataset(str(tmp_path / "dd"))
    assert (len(data.train), len(data.validation), len(data.test)) == (20, 4, 6)
    assert data.validation[0] == Example("review 100", "neg")
    assert data.test[-1] == Example("review 205", "pos")


def test_dataset_dict_with_only_train_and_test_carves_validation(tmp_path):
    datasets.DatasetDict({"train": labelled(20), "test": labelled(6, 200)}).save_to_disk(
        str(tmp_path / "dd")
    )
    data = load_dataset(str(tmp_path / "dd"), validation_fraction=0.2)
    assert (len(data.train), len(data.validation), len(data.test)) == (16, 4, 6)


def test_dataset_dict_without_train_is_refused(tmp_path):
    datasets.DatasetDict({"fit": labelled(4)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"no 'train' split; splits present: 'fit'"):
        load_dataset(str(tmp_path / "dd"))


def test_folder_missing_label_column_names_the_flag(tmp_path):
    labelled().rename_column("label", "stars").save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError) as err:
        load_dataset(str(tmp_path / "d"))
    message = str(err.value)
    assert "no label column 'label'" in message and "'text', 'stars'" in message
    assert "--label-column" in message
    assert len(load_dataset(str(tmp_path / "d"), label_column="stars").train) == 32


def test_unknown_label_in_a_split_names_split_and_row(tmp_path):
    test = datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["pos", "meh"]})
    train = datasets.Dataset.from_dict({"text": TEXTS, "label": ["pos", "neg"] * 20})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"\[test split\]: row 2: label 'meh' is not among"):
        load_dataset(str(tmp_path / "dd"))


def test_a_split_given_twice_is_refused(tmp_path, write):
    datasets.DatasetDict({"train": labelled(20), "test": labelled(6, 200)}).save_to_disk(
        str(tmp_path / "dd")
    )
    extra = write("t.csv", "text,label\nx,pos\n")
    with pytest.raises(ConfigError, match="already has a test split.*drop one"):
        load_dataset(str(tmp_path / "dd"), test=str(extra))


def test_empty_dataset_object_is_refused():
    empty = datasets.Dataset.from_dict({"text": [], "label": []})
    with pytest.raises(DataError, match="no data rows"):
        load_dataset(empty)


# --- datasets objects in the Python API ------------------------------------------


def test_dataset_object_loads_like_its_folder(tmp_path):
    labelled().save_to_disk(str(tmp_path / "reviews"))
    from_object = load_dataset(labelled(), seed=3)
    from_folder = load_dataset(str(tmp_path / "reviews"), seed=3)
    assert all_rows(from_object) == all_rows(from_folder)
    assert from_object.labels == ["neg", "pos"]


def test_dataset_dict_object_with_custom_columns_and_null_cell():
    rows = {"sentence": ["good", "bad", None], "y": [1, 0, 1]}
    train = labelled(10).rename_columns({"text": "sentence", "label": "y"})
    dd = datasets.DatasetDict({"train": train, "validation": datasets.Dataset.from_dict(rows)})
    with pytest.raises(DataError, match=r"\[validation split\]: row 3, column 'sentence': empty"):
        load_dataset(dd, text_column="sentence", label_column="y")


def test_a_non_dataset_object_is_refused():
    with pytest.raises(DataError, match="takes a dataset name, a path or a datasets.Dataset"):
        load_dataset(42)


# --- Parquet -------------------------------------------------------------------------


def test_parquet_from_datasets_keeps_class_label_names(tmp_path):
    path = tmp_path / "d.parquet"
    labelled().to_parquet(str(path))
    data = load_dataset(str(path))
    assert data.labels == ["neg", "pos"] and data.name == "d"
    assert len(all_rows(data)) == 40


def test_parquet_with_plain_columns_and_a_parquet_test_file(tmp_path):
    pa = pytest.importorskip("pyarrow")
    parquet.write_table(
        pa.table({"s": TEXTS, "y": [i % 3 for i in range(40)]}), tmp_path / "a.parquet"
    )
    parquet.write_table(pa.table({"s": ["new"], "y": [2]}), tmp_path / "t.parquet")
    data = load_dataset(
        str(tmp_path / "a.parquet"),
        text_column="s",
        label_column="y",
        test=str(tmp_path / "t.parquet"),
    )
    assert data.labels == ["0", "1", "2"] and data.test == [Example("new", "2")]


def test_parquet_unknown_label_and_missing_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    parquet.write_table(
        pa.table({"text": ["a", "b"], "label": ["pos", "meh"]}), tmp_path / "d.parquet"
    )
    with pytest.raises(DataError, match=r"d\.parquet: row 2: label 'meh' is not among"):
        load_dataset(str(tmp_path / "d.parquet"), labels=["pos", "neg"])
    with pytest.raises(DataError, match=r"no text column 'body'.*'text', 'label'.*--text-column"):
        load_dataset(str(tmp_path / "d.parquet"), text_column="body")


def test_empty_and_broken_parquet(tmp_path, write):
    pa = pytest.importorskip("pyarrow")
    schema = pa.schema([("text", pa.string()), ("label", pa.string())])
    parquet.write_table(schema.empty_table(), tmp_path / "e.parquet")
    with pytest.raises(DataError, match=r"e\.parquet: no data rows"):
        load_dataset(str(tmp_path / "e.parquet"))
    with pytest.raises(DataError, match=r"b\.parquet: not a readable Parquet file"):
        load_dataset(str(write("b.parquet", "text,label\na,b\n")))


def test_hub_snapshot_folder_of_parquet_shards(tmp_path):
    """The layout a hub download leaves: data/{split}-0000N-of-0000M.parquet."""
    (tmp_path / "snap" / "data").mkdir(parents=True)
    data = tmp_path / "snap" / "data"
    labelled(10).to_parquet(str(data / "train-00000-of-00002.parquet"))
    labelled(10, 100).to_parquet(str(data / "train-00001-of-00002.parquet"))
    labelled(4, 200).to_parquet(str(data / "test-00000-of-00001.parquet"))
    loaded = load_dataset(str(tmp_path / "snap"), validation_fraction=0.2)
    assert (len(loaded.train), len(loaded.validation), len(loaded.test)) == (16, 4, 4)
    assert loaded.labels == ["neg", "pos"] and loaded.name == "snap"
    assert Example("review 101", "pos") in all_rows(loaded)


def test_parquet_shards_count_rows_on_across_files_and_name_odd_files(tmp_path):
    pa = pytest.importorskip("pyarrow")
    data = tmp_path / "snap"
    data.mkdir()
    parquet.write_table(
        pa.table({"text": ["a", "b"], "label": ["x", "y"]}), data / "train-0.parquet"
    )
    parquet.write_table(
        pa.table({"text": ["c", "d"], "label": ["x", "z"]}), data / "train-1.parquet"
    )
    with pytest.raises(DataError, match=r"\[train shards, in name order\]: row 4: label 'z'"):
        load_dataset(str(data), labels=["x", "y"])
    parquet.write_table(pa.table({"text": ["e"], "label": ["x"]}), data / "extra.parquet")
    with pytest.raises(DataError, match=r"extra\.parquet: cannot tell which split"):
        load_dataset(str(data))


# --- missing optional packages -------------------------------------------------------


def test_missing_datasets_says_how_to_install(tmp_path, monkeypatch):
    labelled().save_to_disk(str(tmp_path / "d"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(
        DataError, match=r"needs the 'datasets' package.*pip install 'softprompt\[hf\]'"
    ):
        load_dataset(str(tmp_path / "d"))


def test_missing_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    labelled().to_parquet(str(tmp_path / "d.parquet"))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"needs the 'pyarrow' package.*softprompt\[hf\]"):
        load_dataset(str(tmp_path / "d.parquet"))


# --- .json holding one JSON array ------------------------------------------------------


def test_json_array_file_loads(write):
    records = [{"text": f"t{i}", "label": ["a", "b"][i % 2], "id": i} for i in range(20)]
    data = load_dataset(str(write("d.json", "  \n" + json.dumps(records, indent=2))))
    assert data.labels == ["a", "b"] and len(all_rows(data)) == 20


def test_json_array_errors_name_the_item(write):
    records = [{"text": "a", "label": "x"}, {"text": "b", "tag": "y"}]
    with pytest.raises(DataError, match=r"d\.json: item 2: no label column 'label'.*'text', 'tag'"):
        load_dataset(str(write("d.json", json.dumps(records))))
    with pytest.raises(DataError, match=r"e\.json: no data rows"):
        load_dataset(str(write("e.json", "[]")))
    with pytest.raises(DataError, match=r"f\.json: item 1: expected a JSON object.*got str"):
        load_dataset(str(write("f.json", '["a"]')))
    with pytest.raises(DataError, match=r"g\.json: line 2, column \d+: malformed JSON"):
        load_dataset(str(write("g.json", '[{"text": "a", "label": "x"},\n {"text": }]')))


# --- end to end: the CLI trains on a datasets folder -----------------------------------


def test_train_command_on_a_datasets_folder(capsys, tmp_path, llama_folder):
    from softprompt import cli

    words = ["good fun", "bad boring"]
    rows = {"text": [f"{words[i % 2]} movie {i}" for i in range(24)], "label": [0, 1] * 12}
    names = datasets.ClassLabel(names=["positive", "negative"])  # words the tiny vocab has
    features = datasets.Features({"text": datasets.Value("string"), "label": names})
    full = datasets.Dataset.from_dict(rows, features=features)
    splits = {"train": full.select(range(16)), "test": full.select(range(16, 24))}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "hub"))
    argv = ["train", "--backbone", str(llama_folder), "--dataset", str(tmp_path / "hub"),
            "--n-tokens", "2", "--steps", "2", "--eval-every", "2", "--batch-size", "4",
            "--no-baseline", "--template", "review : {text} sentiment :",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "data hub: classification, 2 classes"
    assert [line.split() for line in printed[1:5]] == [
        ["class", "train", "validation", "test"],
        ["negative", "7", "1", "4"],
        ["positive", "7", "1", "4"],
        ["all", "14", "2", "8"],
    ]
    assert (tmp_path / "run" / "prompt.safetensors").exists()
