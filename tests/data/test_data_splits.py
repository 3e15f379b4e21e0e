"""The split helpers the built-ins and user files share."""

from __future__ import annotations

from softprompt.data import softprompt_home
from softprompt.data.records import Example
from softprompt.data.splits import allocate, split_by_quotas


def test_allocate_keeps_total_exact():
    assert allocate(10, {"a": 3, "b": 3, "c": 3}) == {"a": 4, "b": 3, "c": 3}
    quota = allocate(1129, {"x": 5000, "y": 4000, "z": 2286})
    assert sum(quota.values()) == 1129
    assert allocate(0, {"a": 1}) == {"a": 0}


def test_split_by_quotas_fills_exactly_and_is_seeded():
    examples = [Example(f"t{i}", "ab"[i % 2]) for i in range(50)]
    quotas = [{"a": 5, "b": 5}, {"a": 3, "b": 3}]
    test, val, train = split_by_quotas(examples, quotas, seed=0)
    assert (len(test), len(val), len(train)) == (10, 6, 34)
    assert sorted(e.label for e in test) == ["a"] * 5 + ["b"] * 5
    assert split_by_quotas(examples, quotas, seed=0) == [test, val, train]


def test_overflowing_duplicate_group_goes_to_a_later_split():
    examples = [Example("dup", "a")] * 3 + [Example(f"t{i}", "a") for i in range(5)]
    for seed in range(10):
        test, train = split_by_quotas(examples, [{"a": 2}], seed=seed)
        assert len(test) == 2 and all(e.text != "dup" for e in test)


def test_softprompt_home_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTPROMPT_HOME", str(tmp_path))
    assert softprompt_home() == tmp_path
    monkeypatch.delenv("SOFTPROMPT_HOME")
    assert softprompt_home().parts[-2:] == (".cache", "softprompt")
