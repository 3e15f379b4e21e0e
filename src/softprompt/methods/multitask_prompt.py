"""Multitask prompt tuning (Wang et al. 2023, arXiv:2303.02861): one shared prompt,
a low-rank part per task.

Task k's prompt is P_k = P* ∘ (U_k V_kᵀ): the shared (n, d) prompt P* times, element
by element, a rank-r matrix of the task's own (n, r) and (d, r) factors. Trained on
several source tasks at once (one run with mixed-task batches, each task a
`multitask-prompt` method of the same `group`), P* learns what the tasks share and each
task adds r (n + d) numbers; a new target task then starts from P* (`init: file` with a
source task's file) instead of from scratch. The factors start so that U Vᵀ is all ones
(P_k = P* at first). The paper distils P* from single-task teachers first; here it is
trained directly on the mixture, which keeps the method's structure.

Every task's prompt file holds P* and its own factors, so it loads, serves and resumes
alone; `flatten()` gives the (n, d) soft prompt P_k that serving needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from softprompt.errors import ConfigError
from softprompt.inject import Prompt
from softprompt.methods.registry import MethodContext, register_method
from softprompt.methods.virtual_tokens import VirtualTokensConfig, initial_embeddings


@dataclass
class MultitaskPromptConfig(VirtualTokensConfig):
    """`rank` of each task's part; tasks of one run with the same `group` share P*."""

    rank: int = 1
    group: str = "shared"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1:
            raise ConfigError(f"method.rank: must be >= 1, got {self.rank}")


class SharedPrompt(nn.Module):
    """P*: one (n, d) prompt held by every task of a group."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.embeddings = nn.Parameter(embeddings)  # (n, d)


@register_method("multitask-prompt", MultitaskPromptConfig)
class MultitaskPrompt(nn.Module):
    # `softprompt methods` prints this: what it is, and when to pick it
    summary = (
        "a prompt shared by several tasks times a low-rank part per task; pick it for related"
        " tasks trained together, more added later"
    )

    def __init__(self, config: MultitaskPromptConfig, context: MethodContext) -> None:
        super().__init__()
        self.config = config
        d = context.backbone.spec.hidden_size
        key = f"multitask-prompt:{config.group}:{config.n_tokens}"
        shared = context.shared.get(key) if context.shared is not None else None
        if shared is None:
            shared = SharedPrompt(initial_embeddings(config, context))
            if context.shared is not None:
                context.shared[key] = shared
        self.shared = shared
        r = config.rank
        self.task_rows = nn.Parameter(torch.ones(config.n_tokens, r))  # U_k (n, r)
        self.task_cols = nn.Parameter(torch.full((d, r), 1.0 / r))  # V_k (d, r): U Vᵀ = 1

    def task_prompt(self) -> torch.Tensor:
        scale = self.task_rows @ self.task_cols.T  # (n, d), rank r
        return self.shared.embeddings * scale  # (n, d)

    def forward(self) -> Prompt:
        return Prompt(embeds=self.task_prompt())  # (n, d)

    def transfer_embeddings(self) -> torch.Tensor:
        """What a new task starts from: the shared prompt P*."""
        return self.shared.embeddings.detach()  # (n, d)

    @torch.no_grad()
    def flatten(self) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
        """This task's prompt P_k as a plain soft prompt."""
        fields = dataclasses.fields(VirtualTokensConfig)
        options = {f.name: getattr(self.config, f.name) for f in fields}
        return "soft-prompt", options, {"embeddings": self.task_prompt().detach().clone()}
