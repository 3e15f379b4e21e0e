"""OPRO's `position` option: instructions in front of the template or after the text."""

from __future__ import annotations

import pytest
from toydata import LABELS, toy_examples

from softprompt.errors import ConfigError
from softprompt.search import TaskSpec, search
from softprompt.search.opro import instruction_of, place
from softprompt.search.scorer import CandidateScorer

SEED = "review : {text} sentiment :"


class Scripted:
    """An optimizer LM that replies with numbered instructions and keeps the prompts it saw."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def complete(self, messages, *, temperature: float, max_tokens: int) -> str:
        self.prompts.append(messages[-1]["content"])
        return f"Instruction: think step {len(self.prompts)} ."


@pytest.mark.parametrize(
    "position,expected",
    [("begin", "be brief\nreview : {text} sentiment :"),
     ("end", "review : {text}\nbe brief sentiment :")],
)  # fmt: skip
def test_place_and_read_back(position, expected):
    assert place("be brief", SEED, position) == expected
    assert instruction_of(expected, SEED, position) == "be brief"
    assert instruction_of(SEED, SEED, position) == ""  # the seed carries none


@pytest.mark.parametrize("position", ["begin", "end"])
def test_opro_places_instructions_and_shows_them_back(llama, position):
    spec = TaskSpec(backbone=llama, labels=list(LABELS), template=SEED,
                    examples=toy_examples(8, seed=5), train=toy_examples(16, seed=1))  # fmt: skip
    lm = Scripted()
    result = search(spec, method="opro", budget=9, seed=0,
                    options={"optimizer": lm, "per_step": 4, "position": position})  # fmt: skip
    found = [r.template for r in result.ranked if r.template != SEED]
    assert len(found) == 8 and all(place(instruction_of(t, SEED, position), SEED, position) == t
                                   for t in found)  # fmt: skip
    assert "Instruction: think step 1 ." in lm.prompts[-1]  # the history read back
    # after the text, candidates differ only in their tails: the text runs once for all
    tails_only = CandidateScorer._tails_differ_only([r.candidate for r in result.ranked])
    assert tails_only == (position == "end")


def test_unknown_position_is_named(llama):
    spec = TaskSpec(backbone=llama, labels=list(LABELS), template=SEED,
                    examples=toy_examples(4, seed=5))  # fmt: skip
    with pytest.raises(ConfigError, match="position 'middle'"):
        search(
            spec, method="opro", budget=3, options={"optimizer": Scripted(), "position": "middle"}
        )
