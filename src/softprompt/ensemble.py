"""Prompt ensembles (Lester et al. 2021, section 6): K prompts for one task, one forward.

Lester et al. report an ensemble of 5 prompts at 91.3 on SuperGLUE against 91.0 for the
best single prompt and 90.5 on average. Running K prompts usually means K passes of the
model; here each example becomes K rows, one per prompt, in a single batch (the per-row
prompt contract, inject/prompt.py): every distinct prompt runs once, the context once
per row. Members are combined by mean probability or by majority vote.
"""

from __future__ import annotations

from typing import Any

import torch

from softprompt.data import Example
from softprompt.errors import ConfigError
from softprompt.evaluate import length_sorted_batches
from softprompt.metrics import class_counts, metrics_from_counts
from softprompt.model import MultiTaskModel, PromptModel

COMBINE = ("mean", "vote")


class PromptEnsemble:
    """K prompt models of one classification task (same labels) on one backbone."""

    def __init__(self, members: list[PromptModel]) -> None:
        if len(members) < 2:
            raise ConfigError("ensemble: give at least 2 prompt files")
        labels = members[0].task.config.labels
        for i, member in enumerate(members):
            if member.task.config.kind != "classification" or member.task.config.labels != labels:
                raise ConfigError(
                    f"ensemble: member {i} has labels {member.task.config.labels}, member 0 has "
                    f"{labels}; an ensemble needs one classification task"
                )
        self.labels = labels
        self.model = MultiTaskModel({f"m{i}": m for i, m in enumerate(members)})

    @torch.no_grad()
    def member_probs(self, examples: list[Example]) -> torch.Tensor:
        """(K, B, C) class probabilities of every member, from one forward pass of K x B rows."""
        self.model.eval()
        names = self.model.names
        batch = self.model.collate([(name, e) for name in names for e in examples])
        out = self.model(batch)
        return torch.stack([out.outputs[n].scores.float().softmax(-1) for n in names])

    @staticmethod
    def combine(probs: torch.Tensor, how: str = "mean") -> torch.Tensor:
        """(K, B, C) -> (B,) predicted class: mean probability, or majority vote (ties to the
        class with the higher mean probability)."""
        if how not in COMBINE:
            raise ConfigError(f"ensemble: combine must be one of {', '.join(COMBINE)}, got {how!r}")
        mean = probs.mean(0)  # (B, C)
        if how == "mean":
            return mean.argmax(-1)
        votes = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).sum(0)  # (B, C)
        return (votes.float() + 1e-3 * mean).argmax(-1)


def evaluate_ensemble(
    members: list[PromptModel], examples: list[Example], *, batch_size: int = 32
) -> dict[str, Any]:
    """Accuracy / macro-F1 of each member, the mean-probability ensemble and the vote."""
    ensemble = PromptEnsemble(members)
    classes = len(ensemble.labels)
    index = {label: i for i, label in enumerate(ensemble.labels)}
    unknown = sorted({e.label for e in examples} - set(index))
    if unknown:
        raise ConfigError(
            f"ensemble: labels {unknown} are not among the members' {ensemble.labels}"
        )
    counts = {
        key: [0.0] * (1 + 3 * classes) for key in ["mean", "vote"] + list(range(len(members)))
    }
    for chunk in length_sorted_batches(examples, max(1, batch_size // len(members))):
        probs = ensemble.member_probs(chunk)  # (K, B, C)
        targets = torch.tensor([index[e.label] for e in chunk], device=probs.device)
        predictions = {k: probs[k].argmax(-1) for k in range(len(members))}
        predictions |= {how: ensemble.combine(probs, how) for how in COMBINE}
        for key, predicted in predictions.items():
            new = class_counts(predicted, targets, classes)
            counts[key] = [a + b for a, b in zip(counts[key], new, strict=True)]
    rows = len(examples)
    return {
        "members": [metrics_from_counts(counts[k], rows) for k in range(len(members))],
        "ensemble_mean": metrics_from_counts(counts["mean"], rows),
        "ensemble_vote": metrics_from_counts(counts["vote"], rows),
        "examples": rows,
    }
