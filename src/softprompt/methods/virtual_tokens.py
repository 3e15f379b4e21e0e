"""What every method that starts from n token embeddings shares: its config and init.

Soft prompts, P-tuning's encoder input and prefix tuning's MLP input (or the tokens
whose own keys/values start a direct prefix) are all n embeddings chosen by one of
the initializers in `softprompt.init`; validating and building them lives here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from softprompt import init as prompt_init
from softprompt.errors import ConfigError
from softprompt.methods.registry import MethodContext


@dataclass
class VirtualTokensConfig:
    """`init` is one of random, vocab, text, labels, file; `init_text` is used by `text`,
    `init_file` (another prompt file for the same backbone) by `file`.

    `BOUNDS` are the integer ranges validate.check_fields enforces on these options
    (wherever they are written); a subclass adds its own with `{**BOUNDS, ...}`."""

    BOUNDS: ClassVar[dict[str, tuple[int, int]]] = {"n_tokens": (1, 4096), "seed": (0, 2**63 - 1)}
    n_tokens: int = 20
    init: str = "vocab"
    init_text: str | None = None
    init_file: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_tokens < 1:
            raise ConfigError(f"method.n_tokens: must be >= 1, got {self.n_tokens}")
        if self.init not in prompt_init.INITIALIZERS:
            raise ConfigError(
                f"method.init: unknown init {self.init!r}; "
                f"choose one of {', '.join(prompt_init.INITIALIZERS)}"
            )
        if self.init == "text" and not self.init_text:
            raise ConfigError("method.init_text: required when method.init is 'text'")
        if self.init == "file" and not self.init_file:
            raise ConfigError("method.init_file: required when method.init is 'file'")
        if self.init == "file" and not Path(self.init_file).is_file():
            raise ConfigError(f"method.init_file: no such prompt file {self.init_file!r}")


def initial_embeddings(config: VirtualTokensConfig, context: MethodContext) -> torch.Tensor:
    """The configured init, seeded by `config.seed`: (n, d) float32."""
    return prompt_init.initialize(
        config.init,
        n_tokens=config.n_tokens,
        backbone=context.backbone,
        generator=torch.Generator().manual_seed(config.seed),
        text=config.init_text,
        path=config.init_file,
        label_token_ids=context.label_token_ids,
        file_embeddings=context.file_embeddings,
    )
