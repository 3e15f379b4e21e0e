"""P-tuning (Liu et al. 2021, "GPT Understands, Too", arXiv:2103.10385).

Virtual tokens in front of the input, like soft prompts, but produced by a small
prompt encoder (an MLP, or the paper's bidirectional LSTM + MLP head) from n free
embeddings. The paper's reason: free prompt vectors are optimised independently and
land in poor minima; an encoder ties them together. The output is an ordinary
`Prompt(embeds=...)`, so it takes the shared-prefix path on decoders and the
after-[CLS] splice on encoders with no code of its own.

The encoder runs once per forward on the (1, n, d) input; PEFT runs it once per row
(performance.md #4). The whole module (embeddings + encoder) is saved, so training
can resume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from softprompt.errors import ConfigError
from softprompt.inject import Prompt
from softprompt.methods.registry import MethodContext, register_method
from softprompt.methods.virtual_tokens import VirtualTokensConfig, initial_embeddings

ENCODERS = ("mlp", "lstm")


@dataclass
class PTuningConfig(VirtualTokensConfig):
    """`encoder`: "mlp" (Linear-ReLU-Linear) or "lstm" (2-layer biLSTM, then an MLP head);
    `hidden` is the encoder's width. The init options set the encoder's input embeddings."""

    BOUNDS: ClassVar[dict[str, tuple[int, int]]] = {
        **VirtualTokensConfig.BOUNDS,
        "hidden": (1, 65536),
    }
    encoder: str = "mlp"
    hidden: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder not in ENCODERS:
            raise ConfigError(
                f"method.encoder: unknown encoder {self.encoder!r}; choose one of "
                f"{', '.join(ENCODERS)}"
            )
        if self.hidden < 2:
            raise ConfigError(f"method.hidden: must be >= 2, got {self.hidden}")


class LSTMEncoder(nn.Module):
    """The paper's encoder: each virtual token sees all the others through a biLSTM."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        half = hidden // 2
        self.lstm = nn.LSTM(width, half, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Sequential(nn.Linear(2 * half, hidden), nn.ReLU(), nn.Linear(hidden, width))

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(embeds)  # (1, n, 2 * (hidden // 2))
        return self.head(states)  # (1, n, d)


def make_encoder(kind: str, width: int, hidden: int) -> nn.Module:
    if kind == "lstm":
        return LSTMEncoder(width, hidden)
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))


@register_method("p-tuning", PTuningConfig)
class PTuning(nn.Module):
    # `softprompt methods` prints this: what it is, and when to pick it
    summary = (
        "virtual tokens from an LSTM/MLP encoder, placed in template slots {p:N}; pick it for"
        " tokens between template pieces, or when a soft prompt trains unevenly (export "
        "flattens it)"
    )
    # the lr `softprompt compare` trains it at unless told otherwise: PEFT's P-tuning
    # example (sequence classification, PromptEncoder MLP) trains at 1e-3
    recommended_lr = 1e-3

    def __init__(self, config: PTuningConfig, context: MethodContext) -> None:
        super().__init__()
        self.config = config
        initial = initial_embeddings(config, context)  # (n, d)
        self.embeddings = nn.Parameter(initial)
        with torch.random.fork_rng(devices=[]):  # seeded, global RNG untouched
            torch.manual_seed(config.seed)
            self.encoder = make_encoder(config.encoder, initial.shape[1], config.hidden)

    @torch.no_grad()
    def flatten(self) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
        """The encoder's output as a plain soft prompt: the encoder helps optimisation
        only, and serving needs just the (n, d) virtual tokens it produces."""
        fields = dataclasses.fields(VirtualTokensConfig)
        options = {f.name: getattr(self.config, f.name) for f in fields}
        virtual = self.encoder(self.embeddings.unsqueeze(0))[0]  # (n, d)
        return "soft-prompt", options, {"embeddings": virtual.detach().clone()}

    def forward(self) -> Prompt:
        virtual = self.encoder(self.embeddings.unsqueeze(0))  # (1, n, d), once for all rows
        return Prompt(embeds=virtual[0])  # (n, d)
