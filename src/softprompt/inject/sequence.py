"""A decoder's whole input as one (T, d) tensor: what an engine that takes input embeddings
(vLLM's `prompt_embeds`) is sent in place of token ids.

The layout is the one `CausalInjector` runs: [BOS] + the prompt's virtual tokens + the
row's token embeddings (template slots after {text} filled with the prompt's inline
vectors), at positions 0..T-1. Only input-level prompts fit: a key/value prefix (prefix
tuning, deep prompts) is not an embedding and cannot be sent this way.
"""

from __future__ import annotations

import torch

from softprompt.errors import ConfigError
from softprompt.inject.causal import CausalInjector
from softprompt.inject.prompt import Prompt, RowPrompts, row_embeddings


@torch.no_grad()
def input_sequence(
    injector: CausalInjector,
    prompt: Prompt,
    ids: list[int],
    virtual: list[int] | None = None,
) -> torch.Tensor:
    """(T,) ids without BOS -> (1 + n + T, d) float32 input embeddings on the CPU.

    `prompt` is the framed prompt (`PromptModel.prompt()`); `virtual` marks, per id, the
    inline vector it stands for (-1: a real token), as `TemplatedTask.rows` gives it."""
    if prompt.kv is not None:
        raise ConfigError(
            "this prompt is a per-layer key/value prefix (prefix tuning, deep prompts), "
            "which cannot be sent as input embeddings; serve it with softprompt's own engine"
        )
    device = injector.device
    parts = []
    bos = injector.backbone.spec.bos_token_id
    if bos is not None:
        parts.append(injector.embed(torch.tensor([bos], device=device)))  # (1, d)
    if prompt.embeds is not None:
        parts.append(prompt.embeds.to(device).float())  # (n, d)
    if ids:
        tokens = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
        embeds = injector.embed(tokens)  # (1, T, d)
        inline = None
        if virtual is not None and any(v >= 0 for v in virtual):
            inline = torch.tensor([virtual], dtype=torch.long, device=device)  # (1, T)
        rows = RowPrompts.shared(prompt, 1, device)
        parts.append(row_embeddings(rows, embeds, inline)[0].float())  # (T, d)
    if not parts:
        raise ConfigError("nothing to send: the input, template and prompt are all empty")
    return torch.cat(parts).cpu()  # (1 + n + T, d)
