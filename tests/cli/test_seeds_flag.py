"""`--seeds` (compare, the few-shot recipes): a bare number is a count, a comma makes it a
list, so one seed other than 0 can be run alone."""

from __future__ import annotations

import pytest

from softprompt.commands.flags import seed_list
from softprompt.errors import ConfigError


@pytest.mark.parametrize(
    ("raw", "seeds"), [("3", [0, 1, 2]), ("1", [0]), ("0,4,7", [0, 4, 7]), ("5,", [5]), ("0,", [0])]
)
def test_seeds_is_a_count_unless_it_has_a_comma(raw, seeds):
    assert seed_list(raw) == seeds


def test_a_seed_that_is_no_number_is_named():
    with pytest.raises(ConfigError, match="--seeds: expected whole numbers"):
        seed_list("a,b")


@pytest.mark.parametrize("raw", ["1000000000", "0", "-3"])
def test_a_count_out_of_range_is_refused_in_one_line_naming_the_list_form(raw):
    with pytest.raises(ConfigError, match=r"a bare number is a count .*write --seeds"):
        seed_list(raw)


@pytest.mark.parametrize("raw", ["1,1", "-1,2", ","])
def test_a_list_of_repeated_negative_or_no_seeds_is_refused(raw):
    with pytest.raises(ConfigError, match="expected distinct seeds"):
        seed_list(raw)
