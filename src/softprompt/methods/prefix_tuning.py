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
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import functional_call

from softprompt.errors import ConfigError
from softprompt.inject import Prompt
from softprompt.methods.registry import MethodContext, register_method
from softprompt.methods.virtual_tokens import VirtualTokensConfig, initial_embeddings


@dataclass
class PrefixTuningConfig(VirtualTokensConfig):
    """`reparameterize`: K/V from an MLP of width `hidden` over n embeddings (the paper's
    setting) instead of learned directly. The init options set the MLP's input
    embeddings, or the tokens whose K/V start the direct prefix.

    `lr_scale` multiplies the prefix's learning rate while a task head keeps train.lr:
    every prefix parameter (the MLP and its input embeddings, or the direct prefix) is
    stored divided by it and used multiplied by it, which under Adam moves each one
    lr_scale times as fast and leaves the training loop one lr. On MiniLM tagging the MLP's keys outgrew the model's own
    within 30 steps at the head's lr, so the prefix wants a much smaller one there."""

    BOUNDS: ClassVar[dict[str, tuple[int, int]]] = {
        **VirtualTokensConfig.BOUNDS,
        "hidden": (1, 65536),
    }
    n_tokens: int = 10
    reparameterize: bool = True
    hidden: int = 512
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.reparameterize, bool):
            raise ConfigError(
                f"method.reparameterize: must be true or false, got {self.reparameterize!r}"
            )
        if self.hidden < 1:
            raise ConfigError(f"method.hidden: must be >= 1, got {self.hidden}")
        if not 0 < self.lr_scale < float("inf"):
            raise ConfigError(f"method.lr_scale: must be a finite number > 0, got {self.lr_scale}")


@register_method("prefix-tuning", PrefixTuningConfig)
class PrefixTuning(nn.Module):
    # `softprompt methods` prints this: what it is, and when to pick it
    summary = (
        "learned keys/values at every layer (P-tuning v2); pick it when a soft prompt lacks "
        "capacity: generation, tagging, small backbones"
    )
    # the lr `softprompt compare` trains it at unless told otherwise. For the default MLP
    # form, Li & Liang 2021 (App. A) train at 5e-5; PEFT's examples use 1e-2, at which
    # (and at 3e-2) the loss spiked to 12-24 on SmolLM2 (configs/multitask.yaml), and at
    # 1e-3 the MLP's keys outgrew MiniLM's own within 30 steps (docs/methods/p-tuning-v2.md:
    # F1 0 at 1e-3, 0.447 at 1e-4)
    recommended_lr = 1e-4

    def __init__(self, config: PrefixTuningConfig, context: MethodContext) -> None:
        super().__init__()
        spec = context.backbone.spec
        self.config = config
        self.layers = spec.num_layers
        self.kv_heads = spec.num_kv_heads
        self.head_dim = spec.head_dim
        initial = initial_embeddings(config, context)  # (n, d)
        if config.reparameterize:
            self.embeddings = nn.Parameter(initial / config.lr_scale)  # (n, d)
            width = self.layers * 2 * self.kv_heads * self.head_dim
            with torch.random.fork_rng(devices=[]):  # seeded, global RNG untouched
                torch.manual_seed(config.seed)
                self.mlp = nn.Sequential(
                    nn.Linear(spec.hidden_size, config.hidden),
                    nn.Tanh(),
                    nn.Linear(config.hidden, width),
                )
            with torch.no_grad():  # stored / lr_scale, used * lr_scale: same K/V at init
                for weight in self.mlp.parameters():
                    weight.div_(config.lr_scale)
        else:
            kv = context.injector.token_kv(initial)  # L x 2 x (kvh, n, hd)
            stacked = torch.stack([torch.stack(pair) for pair in kv]).float()  # (L, 2, kvh, n, hd)
            self.prefix = nn.Parameter(stacked / config.lr_scale)

    def kv_tensor(self) -> torch.Tensor:
        """All layers' keys and values in one tensor: (L, 2, kvh, n, hd)."""
        if not self.config.reparameterize:
            return self.prefix * self.config.lr_scale  # (L, 2, kvh, n, hd)
        n, scale = self.config.n_tokens, self.config.lr_scale
        if scale == 1.0:
            flat = self.mlp(self.embeddings)  # (n, L * 2 * kvh * hd), once for the whole batch
        else:
            weights = {name: w * scale for name, w in self.mlp.named_parameters()}
            flat = functional_call(self.mlp, weights, (self.embeddings * scale,))  # (n, L*2*kvh*hd)
        kv = flat.view(n, self.layers, 2, self.kv_heads, self.head_dim)  # (n, L, 2, kvh, hd)
        return kv.permute(1, 2, 3, 0, 4)  # (L, 2, kvh, n, hd)

    @torch.no_grad()
    def flatten(self) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]] | None:
        """The same prefix without its MLP: a direct prefix-tuning method holding the K/V
        (None when it is direct already).

        The MLP helps optimisation only; serving needs the (L, 2, kvh, n, hd) K/V alone
        (n x 11,520 numbers on SmolLM2 instead of ~6M MLP weights)."""
        if not self.config.reparameterize and self.config.lr_scale == 1.0:
            return None
        options = {**dataclasses.asdict(self.config), "reparameterize": False, "lr_scale": 1.0}
        return "prefix-tuning", options, {"prefix": self.kv_tensor().detach().clone()}

    def forward(self) -> Prompt:
        kv = self.kv_tensor()  # (L, 2, kvh, n, hd)
        return Prompt(kv=tuple((layer[0], layer[1]) for layer in kv))  # L x 2 x (kvh, n, hd)
