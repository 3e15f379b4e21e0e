"""Between hard and soft prompts, both ways.

Hard -> soft: a search result is saved as a prompt file of method `none` with
the found template (so `softprompt eval / predict / info` treat it like any
other prompt), and `soft_init_from_prompt` turns such a file into a soft-prompt
config that starts *exactly* at the hard prompt: the template's words before
`{text}` become the virtual tokens (`init: text`) and the template keeps the
rest, so at step 0 the model sees the same vectors as the hard prompt.

Soft -> hard: `project` maps each virtual token of a learned prompt to its
nearest vocabulary row (cosine or L2), and `projected_candidate` puts those
token ids exactly where the vectors were (after BOS, before the template), so
the scorer measures how much accuracy the projection keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from softprompt.backbones import Backbone
from softprompt.errors import ConfigError
from softprompt.inject import embedding_table
from softprompt.model import PromptModel, load_prompt_meta
from softprompt.search.scorer import Candidate
from softprompt.tasks import TaskConfig
from softprompt.tasks.template import Template

METRICS = ("cosine", "l2")


def save_search_prompt(
    path: str | Path,
    backbone: Backbone,
    task: TaskConfig,
    template: str,
    **meta: Any,
) -> Path:
    """A `none` prompt file with `template`; `meta` (scores, search record) goes in the header."""
    config = TaskConfig(**{**task.to_dict(), "template": template})
    return PromptModel(backbone, config, method="none").save(path, **meta)


def soft_init_from_prompt(path: str | Path, backbone: Backbone) -> tuple[dict, dict]:
    """(method, task) configs for soft prompt tuning started from a hard prompt file.

    The template's words before `{text}` become the soft prompt (`init: text`), the
    template keeps the slot and what follows. A template with nothing before the slot
    starts the soft prompt from its tail's words instead (and keeps the template)."""
    meta = load_prompt_meta(path)
    if meta["method"]["name"] != "none":
        raise ConfigError(f"{path}: not a hard prompt (method {meta['method']['name']!r})")
    task = dict(meta["task"])
    prefix, lead, suffix = Template(task["template"]).pieces("")
    words = prefix or suffix.strip()
    if not words:
        raise ConfigError(f"{path}: template {task['template']!r} has no words to start from")
    if prefix:
        task["template"] = lead + "{text}" + suffix
    n_tokens = len(backbone.tokenizer(words, add_special_tokens=False)["input_ids"])
    method = {"name": "soft-prompt", "init": "text", "init_text": words, "n_tokens": n_tokens}
    return method, task


@dataclass
class Projection:
    metric: str
    ids: list[int]
    tokens: list[str]
    similarity: list[float]  # cosine of each vector to its token (both metrics report it)
    distance: list[float]  # L2 distance of each vector to its token


def soft_vectors(model: PromptModel) -> torch.Tensor:
    """The virtual-token vectors a model puts in front of the input: (n, d)."""
    prompt = model.flattened().method()
    if prompt.embeds is None or prompt.embeds.shape[0] == 0:
        raise ConfigError(
            f"method {model.method_name!r} has no input-embedding prompt to project; "
            "project a soft-prompt or p-tuning file"
        )
    return prompt.embeds.detach().float()  # (n, d)


def project(model: PromptModel, metric: str = "cosine") -> Projection:
    """Nearest vocabulary token of each virtual token (special tokens excluded)."""
    if metric not in METRICS:
        raise ConfigError(f"--project-metric: choose one of {', '.join(METRICS)}, got {metric!r}")
    vectors = soft_vectors(model)  # (n, d)
    table = embedding_table(model.backbone)  # (V, d), read block by block
    banned = torch.tensor(sorted(set(model.backbone.tokenizer.all_special_ids)), dtype=torch.long)
    closeness = torch.empty(vectors.shape[0], table.shape[0])  # (n, V)
    for start, block in table.blocks():  # (b, d) float32
        block = block.to(vectors.device)
        if metric == "cosine":
            part = F.normalize(vectors, dim=-1) @ F.normalize(block, dim=-1).T  # (n, b)
        else:
            part = -torch.cdist(vectors, block)  # (n, b)
        closeness[:, start : start + block.shape[0]] = part
    closeness[:, banned] = float("-inf")
    ids = closeness.argmax(-1)  # (n,)
    picked = table.rows(ids).to(vectors.device)  # (n, d)
    return Projection(
        metric=metric,
        ids=ids.tolist(),
        tokens=[model.backbone.tokenizer.decode([i]) for i in ids.tolist()],
        similarity=F.cosine_similarity(vectors, picked, dim=-1).tolist(),
        distance=(vectors - picked).norm(dim=-1).tolist(),
    )


def projected_candidate(model: PromptModel, projection: Projection) -> Candidate:
    """The hard prompt with the projected ids exactly where the vectors were."""
    tokenizer = model.backbone.tokenizer
    base = Candidate.from_template(model.task.config.template, tokenizer)
    text = tokenizer.decode(projection.ids)
    return Candidate(
        prefix=tuple(projection.ids) + base.prefix,
        lead=base.lead,
        suffix=base.suffix,
        template=text + model.task.config.template,
    )
