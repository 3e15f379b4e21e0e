"""Prefix tuning (Li & Liang 2021, arXiv:2101.00190): learned keys/values at every layer.

Input-embedding prompts can only steer a frozen model through what the first layer
makes of them; a prefix of keys and values at every layer steers each layer directly
(Li & Liang: E2E BLEU 70.3 vs 48.1-62.2 for embedding-only prompts, performance.md).
The prefix reaches the model as `Prompt(kv=...)`, the same shared K/V cache path that
soft prompts use on causal decoders, so it costs one (P=1) prefix for the whole batch.
On an encoder the same per-layer keys/values are P-tuning v2's deep prompts (Liu et al.
2022, arXiv:2110.07602): every token attends to them at every layer (inject/encoder.py).

Training the K/V directly is unstable in the paper, so by default they are produced by
a small MLP from n embeddings (`reparameterize`); the MLP runs once per forward, not once
per row as in PEFT (performance.md #4). Without it, the K/V start as the backbone's own
K/V of the init tokens (`CausalInjector.token_kv`), so they begin in-distribution (PEFT's GSM8K runs: a prefix
taken from text got 41.6% where a random one got 18.6%). The whole module, MLP
included, is saved: PEFT drops the MLP at save, so its runs cannot resume
(PEFT #1247, #1607).
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
class PrefixTuningConfig(VirtualTokensConfig):
    """`reparameterize`: K/V from an MLP of width `hidden` over n embeddings (the paper's
    setting) instead of learned directly. The init options set the MLP's input
    embeddings, or the tokens whose K/V start the direct prefix."""

    n_tokens: int = 10
    reparameterize: bool = True
    hidden: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.reparameterize, bool):
            raise ConfigError(
                f"method.reparameterize: must be true or false, got {self.reparameterize!r}"
            )
        if self.hidden < 1:
            raise ConfigError(f"method.hidden: must be >= 1, got {self.hidden}")


@register_method("prefix-tuning", PrefixTuningConfig)
class PrefixTuning(nn.Module):
    def __init__(self, config: PrefixTuningConfig, context: MethodContext) -> None:
        super().__init__()
        spec = context.backbone.spec
        self.config = config
        self.layers = spec.num_layers
        self.kv_heads = spec.num_kv_heads
        self.head_dim = spec.head_dim
        initial = initial_embeddings(config, context)  # (n, d)
        if config.reparameterize:
            self.embeddings = nn.Parameter(initial)  # (n, d)
            width = self.layers * 2 * self.kv_heads * self.head_dim
            with torch.random.fork_rng(devices=[]):  # seeded, global RNG untouched
                torch.manual_seed(config.seed)
                self.mlp = nn.Sequential(
                    nn.Linear(spec.hidden_size, config.hidden),
                    nn.Tanh(),
                    nn.Linear(config.hidden, width),
                )
        else:
            kv = context.injector.token_kv(initial)  # L x 2 x (kvh, n, hd)
            self.prefix = nn.Parameter(torch.stack([torch.stack(pair) for pair in kv]).float())

    def kv_tensor(self) -> torch.Tensor:
        """All layers' keys and values in one tensor: (L, 2, kvh, n, hd)."""
        if not self.config.reparameterize:
            return self.prefix
        n = self.config.n_tokens
        flat = self.mlp(self.embeddings)  # (n, L * 2 * kvh * hd), once for the whole batch
        kv = flat.view(n, self.layers, 2, self.kv_heads, self.head_dim)  # (n, L, 2, kvh, hd)
        return kv.permute(1, 2, 3, 0, 4)  # (L, 2, kvh, n, hd)

    @torch.no_grad()
    def flatten(self) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]] | None:
        """The same prefix without its MLP: a direct prefix-tuning method holding the K/V
        (None when it is direct already).

        The MLP helps optimisation only; serving needs the (L, 2, kvh, n, hd) K/V alone
        (n x 11,520 numbers on SmolLM2 instead of ~6M MLP weights)."""
        if not self.config.reparameterize:
            return None
        options = {**dataclasses.asdict(self.config), "reparameterize": False}
        return "prefix-tuning", options, {"prefix": self.kv_tensor().detach().clone()}

    def forward(self) -> Prompt:
        kv = self.kv_tensor()  # (L, 2, kvh, n, hd)
        return Prompt(kv=tuple((layer[0], layer[1]) for layer in kv))  # L x 2 x (kvh, n, hd)
