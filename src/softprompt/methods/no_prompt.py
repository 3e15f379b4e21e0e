"""No virtual tokens: the zero-shot, manual-template and head-only baselines.

Running baselines through the same model, task and loop as the prompt methods
is what makes comparisons honest: only the prompt differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from softprompt.inject import Prompt
from softprompt.methods.registry import MethodContext, register_method


@dataclass
class NoPromptConfig:
    """No options: nothing is learned by the method itself."""


@register_method("none", NoPromptConfig)
class NoPrompt(nn.Module):
    # `softprompt methods` prints this: what it is, and when to pick it
    summary = (
        "no prompt: template and label words alone (zero-shot), or a task head alone (linear "
        "probe); the baseline to beat"
    )

    def __init__(self, config: NoPromptConfig, context: MethodContext) -> None:
        super().__init__()
        self.config = config

    def forward(self) -> Prompt:
        return Prompt()

    def flatten(self) -> None:
        return None
