"""task.chat_template on SmolLM2-135M-Instruct (ChatML, no BOS; a default system turn
when none is given): every row is exactly what `apply_chat_template(tokenize=True)` gives,
for one text and for a conversation."""

from __future__ import annotations

import pytest

from softprompt.backbones import load_backbone
from softprompt.data import Example
from softprompt.model import PromptModel
from softprompt.tasks import TaskConfig

pytestmark = pytest.mark.slow

TURNS = [
    {"role": "system", "content": "Classify the review."},
    {"role": "user", "content": "A gorgeous, heartfelt film."},
    {"role": "assistant", "content": "positive"},
    {"role": "user", "content": "Two hours I will never get back."},
]


@pytest.mark.parametrize("turns", [TURNS[1:2], TURNS], ids=["one-text", "conversation"])
def test_rows_are_the_tokenizers_own_rendering(turns):
    backbone = load_backbone("smollm2-135m")
    config = TaskConfig(labels=["negative", "positive"], chat_template=True)
    model = PromptModel(backbone, config, method="soft-prompt", method_options={"n_tokens": 4})
    tokenizer = model.task.tokenizer
    text = turns[0]["content"] if len(turns) == 1 else model.task.conversation(turns)
    row = model.task.contexts([Example(text, "")])[0]
    front = [] if backbone.spec.bos_token_id is None else [backbone.spec.bos_token_id]
    want = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if hasattr(want, "keys") else want
    assert front + row == list(want)
