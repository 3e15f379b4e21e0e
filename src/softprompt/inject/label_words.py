"""Label tokens with learned output rows (DART): the head's rows for a few tokens read
out for initialisation, and logits computed with trainable rows in their place.

The head's own post-processing (bias, logit scale, soft-capping) stays exactly as
inject/head.py applies it; only the rows of the label tokens change.
"""

from __future__ import annotations

import torch

from softprompt.backbones import Backbone
from softprompt.inject.head import LMHead


@torch.no_grad()
def head_rows(backbone: Backbone, token_ids: list[int]) -> torch.Tensor:
    """(W, d) float32 CPU copy of the output projection's rows for `token_ids`."""
    rows = LMHead(backbone).rows(torch.tensor(token_ids, dtype=torch.long))  # (W, d)
    return rows.float().cpu().clone()


def label_logits(
    backbone: Backbone, hidden: torch.Tensor, rows: torch.Tensor, token_ids: list[int]
) -> torch.Tensor:
    """(B, d) hidden states, (C, d) rows standing in for `token_ids` -> (B, C) float32
    logits, as the model's head would give them with those rows (its bias for the same
    tokens, scale and soft-cap kept)."""
    head = LMHead(backbone)
    if head.bias is not None:
        index = torch.tensor(token_ids, dtype=torch.long, device=head.bias.device)
        head.bias = head.bias[index].to(device=rows.device, dtype=rows.dtype)  # (C,)
    head.weight = rows  # (C, d)
    return head(hidden)  # (B, C)
