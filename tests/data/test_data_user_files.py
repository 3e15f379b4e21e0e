"""User CSV / JSON Lines files: happy paths and every error the loader promises."""

from __future__ import annotations

from collections import Counter

import pytest

from softprompt.data import Dataset, Example, load_dataset
from softprompt.errors import ConfigError, DataError

ROWS_100 = [(f"text number {i}", "pos" if i % 5 else "neg") for i in range(100)]


def make_csv(rows, header="text,label"):
    return header + "\n" + "".join(f"{t},{lab}\n" for t, lab in rows)


# --- happy paths -----------------------------------------------------------------


def test_csv_split_sizes_are_fractions_and_stratified(write):
    path = write("d.csv", make_csv(ROWS_100))
    data = load_dataset(str(path))
    assert (len(data.train), len(data.validation), len(data.test)) == (80, 10, 10)
    assert data.labels == ["neg", "pos"]
    assert data.task == "classification" and data.name == "d"
    assert Counter(e.label for e in data.test) == {"pos": 8, "neg": 2}
    assert Counter(e.label for e in data.validation) == {"pos": 8, "neg": 2}
    texts = [e.text for part in (data.train, data.validation, data.test) for e in part]
    assert sorted(texts) == sorted(t for t, _ in ROWS_100)


def test_split_is_seeded(write):
    path = write("d.csv", make_csv(ROWS_100))
    first, again = load_dataset(str(path), seed=3), load_dataset(str(path), seed=3)
    other = load_dataset(str(path), seed=4)
    assert first == again
    assert first.test != other.test


def test_numeric_csv_labels_become_strings(write):
    path = write("d.csv", make_csv([(f"t{i}", i % 2) for i in range(20)]))
    data = load_dataset(str(path))
    assert data.labels == ["0", "1"]
    assert all(isinstance(e.label, str) for e in data.train)


def test_jsonl_numbers_and_custom_keys(write_jsonl):
    records = [{"sentence": f"s{i}", "y": i % 2, "extra": None} for i in range(20)]
    path = write_jsonl("d.jsonl", records)
    data = load_dataset(str(path), text_column="sentence", label_column="y")
    assert data.labels == ["0", "1"]
    assert Example("s1", "1") in data.train + data.validation + data.test


def test_json_extension_is_json_lines_and_booleans_are_json_spelled(write):
    lines = "".join(
        f'{{"text": "t{i}", "label": {"true" if i % 2 else "false"}}}\n' for i in range(10)
    )
    data = load_dataset(str(write("d.json", "\n" + lines + "\n")))
    assert data.labels == ["false", "true"]


def test_separate_validation_and_test_files(write):
    train = write("train.csv", make_csv([("a", "x"), ("b", "y"), ("c", "x")]))
    val = write("val.csv", make_csv([("d", "y")]))
    test = write("test.csv", make_csv([("e", "x"), ("f", "x")]))
    data = load_dataset(str(train), validation=str(val), test=str(test))
    assert len(data.train) == 3
    assert data.validation == [Example("d", "y")]
    assert data.test == [Example("e", "x"), Example("f", "x")]


def test_only_test_file_given_splits_validation_from_train(write):
    train = write("train.csv", make_csv(ROWS_100))
    test = write("test.csv", make_csv([("e", "pos")]))
    data = load_dataset(str(train), test=str(test), validation_fraction=0.2)
    assert (len(data.train), len(data.validation), len(data.test)) == (80, 20, 1)


def test_given_labels_keep_their_order(write):
    path = write("d.csv", make_csv(ROWS_100))
    data = load_dataset(str(path), labels=["pos", "neg", "pos"])
    assert data.labels == ["pos", "neg"]


def test_generation_task(write_jsonl):
    records = [{"text": f"q{i}", "label": f"answer {i}"} for i in range(30)]
    data = load_dataset(str(write_jsonl("g.jsonl", records)), task="generation")
    assert data.labels == [] and data.task == "generation"
    assert (len(data.train), len(data.validation), len(data.test)) == (24, 3, 3)


def test_bom_quotes_and_whitespace(write):
    content = '\ufefftext,label\n"hello, world",  a \n"multi\nline",b\n'
    data = load_dataset(str(write("d.csv", content)), validation_fraction=0, test_fraction=0)
    assert sorted(data.train, key=lambda e: e.text) == [
        Example("hello, world", "a"),
        Example("multi\nline", "b"),
    ]


def test_duplicate_texts_stay_in_one_split(write):
    rows = [(f"t{i % 20}", "a" if i % 40 < 20 else "b") for i in range(80)]
    for seed in range(5):
        data = load_dataset(str(write("d.csv", make_csv(rows))), seed=seed)
        parts = [{e.text for e in p} for p in (data.train, data.validation, data.test)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_too_few_distinct_texts_for_a_split_is_an_error(write):
    rows = [
        ("the movie was good" if i % 2 else "the movie was bad", "pos" if i % 2 else "neg")
        for i in range(80)
    ]
    with pytest.raises(DataError, match="split came out empty.*2 distinct texts.*--test-file"):
        load_dataset(str(write("d.csv", make_csv(rows))))


def test_split_by_name():
    data = Dataset("d", "classification", ["a"], [Example("x", "a")], [], [])
    assert data.split("train") == [Example("x", "a")]
    with pytest.raises(DataError, match="unknown split 'dev'.*train, validation, test"):
        data.split("dev")


# --- errors ------------------------------------------------------------------------


def test_file_not_found(tmp_path):
    with pytest.raises(DataError, match=r"missing\.csv: file not found"):
        load_dataset(str(tmp_path / "missing.csv"))


def test_unknown_name_is_neither_builtin_nor_file():
    with pytest.raises(DataError, match="neither a built-in dataset.*movie-sentiment"):
        load_dataset("no-such-dataset")


@pytest.mark.parametrize("name", ["d.csv", "d.jsonl"])
def test_zero_byte_file(write, name):
    with pytest.raises(DataError, match="file is empty"):
        load_dataset(str(write(name, b"")))


def test_header_only_csv(write):
    with pytest.raises(DataError, match="no data rows"):
        load_dataset(str(write("d.csv", "text,label\n\n")))


def test_unsupported_extension(write):
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'.*\.csv, \.jsonl, \.json"):
        load_dataset(str(write("d.txt", "text,label\na,b\n")))


def test_missing_text_column_csv(write):
    path = write("d.csv", "sentence,label\na,b\n")
    with pytest.raises(DataError) as err:
        load_dataset(str(path))
    message = str(err.value)
    assert "d.csv" in message and "line 1" in message and "'text'" in message
    assert "'sentence', 'label'" in message and "--text-column" in message


def test_missing_label_column_jsonl(write_jsonl):
    path = write_jsonl("d.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "tag": "y"}])
    with pytest.raises(DataError) as err:
        load_dataset(str(path))
    message = str(err.value)
    assert "d.jsonl: line 2" in message and "'label'" in message
    assert "'text', 'tag'" in message and "--label-column" in message


def test_null_label_counts_as_missing(write_jsonl):
    path = write_jsonl("d.jsonl", [{"text": "a", "label": None}])
    with pytest.raises(DataError, match="line 1: no label column 'label'"):
        load_dataset(str(path))


def test_unknown_label_with_given_labels(write):
    path = write("d.csv", make_csv([("a", "pos"), ("b", "neg"), ("c", "meh")]))
    with pytest.raises(DataError, match=r"d\.csv: line 4: label 'meh' is not among"):
        load_dataset(str(path), labels=["pos", "neg"])


def test_unknown_label_in_test_file(write):
    train = write("train.csv", make_csv([("a", "pos"), ("b", "neg")] * 3))
    test = write("test.csv", make_csv([("c", "pos"), ("d", "maybe")]))
    with pytest.raises(DataError) as err:
        load_dataset(str(train), test=str(test), validation_fraction=0.2)
    message = str(err.value)
    assert "test.csv: line 3" in message and "'maybe'" in message and "train.csv" in message


def test_bad_utf8_names_line(write):
    content = b"text,label\nok,a\nbad \xff byte,b\n"
    with pytest.raises(DataError, match=r"line 3, byte 5: not valid UTF-8 \(byte 0xff\)"):
        load_dataset(str(write("d.csv", content)))


def test_malformed_json_names_line(write):
    content = '{"text": "a", "label": "x"}\n\n{"text": "b", "label": }\n'
    with pytest.raises(DataError, match=r"d\.jsonl: line 3, column \d+: malformed JSON"):
        load_dataset(str(write("d.jsonl", content)))


def test_json_array_in_a_jsonl_file_gets_a_hint(write):
    with pytest.raises(DataError, match="looks like a JSON array: name the file .json"):
        load_dataset(str(write("d.jsonl", '[{"text": "a",\n "label": "b"}]\n')))


def test_json_line_that_is_not_an_object(write):
    with pytest.raises(DataError, match="line 1: expected a JSON object.*got list"):
        load_dataset(str(write("d.jsonl", '["a", "b"]\n')))


def test_json_label_of_wrong_type(write_jsonl):
    path = write_jsonl("d.jsonl", [{"text": "a", "label": ["x"]}])
    with pytest.raises(DataError, match="line 1, key 'label': expected a string or number"):
        load_dataset(str(path))


def test_empty_text_names_line(write):
    path = write("d.csv", 'text,label\n"a\nb",x\n  ,y\n')
    with pytest.raises(DataError, match=r"line 4, column 'text': empty text"):
        load_dataset(str(path))


def test_empty_label_names_line(write_jsonl):
    path = write_jsonl("d.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": " "}])
    with pytest.raises(DataError, match=r"line 2, column 'label': empty label"):
        load_dataset(str(path))


def test_csv_row_with_wrong_field_count(write):
    path = write("d.csv", "text,label\na,b\nc,d,e\n")
    with pytest.raises(DataError, match="line 3: 3 fields but the header has 2"):
        load_dataset(str(path))


def test_single_label_is_not_classification(write):
    path = write("d.csv", make_csv([(f"t{i}", "same") for i in range(10)]))
    with pytest.raises(DataError, match="at least 2 labels"):
        load_dataset(str(path))


def test_too_few_rows_to_split(write):
    path = write("d.csv", make_csv([("a", "x"), ("b", "y")]))
    with pytest.raises(DataError, match="only 2 rows, too few"):
        load_dataset(str(path))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"validation_fraction": 1.5}, "validation_fraction must be in"),
        ({"test_fraction": -0.1}, "test_fraction must be in"),
        ({"validation_fraction": 0.5, "test_fraction": 0.5}, "must be below 1"),
        ({"task": "regression"}, "task 'regression' is not known"),
        ({"task": "generation", "labels": ["a"]}, "labels only apply"),
    ],
)
def test_bad_options(write, kwargs, pattern):
    path = write("d.csv", make_csv(ROWS_100))
    with pytest.raises(ConfigError, match=pattern):
        load_dataset(str(path), **kwargs)
