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
