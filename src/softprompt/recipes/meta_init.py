"""A meta-learned soft-prompt init (Reptile, first-order; MetaPT, Huang et al. 2022).

A prompt trained from scratch on K shots per class starts far from anything useful;
MetaPT (https://arxiv.org/abs/2205.11961) learns where to start from other tasks. Each
outer step here copies the shared init theta into one source task's prompt, adapts it
for `inner_steps` Adam steps on that task's rows, and moves theta towards the adapted
prompt phi (Nichol et al. 2018, https://arxiv.org/abs/1803.02999):
theta <- theta + eps_s (phi - theta), eps_s decaying linearly from `meta_lr` to 0.
The move is an SGD step on the "gradient" theta - phi, so the outer state is an
ordinary optimizer and the checkpoint helpers (train/checkpoint.py) save it once per
outer step; the inner rows and the task order are pure functions of (seed, step), so a
resumed run ends exactly where an uninterrupted one does.

Only the method's tensors are meta-learned, so every source task must score label
words (no trainable head). The result, OUT/prompt.safetensors, is an ordinary prompt
file: train the target with `init: file` / `--init file --init-file OUT/prompt.safetensors`.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softprompt.backbones import Backbone, load_backbone
from softprompt.data import Dataset, load_dataset
from softprompt.device import resolve_device
from softprompt.errors import ConfigError
from softprompt.files import atomic_write_text
from softprompt.model import PromptModel, build_model
from softprompt.train.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint

CHECKPOINT_FILE = "checkpoint.safetensors"
PROMPT_FILE = "prompt.safetensors"


@dataclass
class MetaInitConfig:
    """Reptile's settings; `method` must be one every source task can share (same shapes)."""

    method: dict[str, Any] = field(default_factory=lambda: {"name": "soft-prompt", "n_tokens": 8})
    outer_steps: int = 100
    inner_steps: int = 8
    inner_lr: float = 3e-2
    meta_lr: float = 1.0
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("outer_steps", "inner_steps", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"meta_init.{key}: must be a whole number >= 1, got {value!r}")
        if not 0 < self.inner_lr < float("inf"):
            raise ConfigError(
                f"meta_init.inner_lr: must be a finite number > 0, got {self.inner_lr}"
            )
        if not 0 < self.meta_lr <= 1:
            raise ConfigError(f"meta_init.meta_lr: must be in (0, 1], got {self.meta_lr}")


def check_sources(count: int) -> None:
    """An init learned across tasks needs at least two of them."""
    if count < 2:
        raise ConfigError(
            f"meta_init: give at least 2 source datasets to learn an init across, got {count}"
        )


def _source_models(
    backbone: Backbone, sources: list[Dataset], method: dict[str, Any]
) -> list[PromptModel]:
    """One model per source task; refused when a task trains more than the method."""
    check_sources(len(sources))
    models = [build_model(backbone, d, method, {}) for d in sources]
    for dataset, model in zip(sources, models, strict=True):
        extra = [n for n, p in model.named_parameters() if p.requires_grad and "method." not in n]
        if extra:
            raise ConfigError(
                f"meta_init: source {dataset.name!r} trains {extra[0]} beside the prompt (a "
                "classifier head); meta-init learns label-word tasks on a causal LM"
            )
    return models


def _prompt_params(model: PromptModel) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if p.requires_grad]


def _adapt(
    model: PromptModel,
    dataset: Dataset,
    theta: list[torch.Tensor],
    config: MetaInitConfig,
    step: int,
) -> list[torch.Tensor]:
    """phi: theta after `inner_steps` Adam steps on seeded batches of the task's rows."""
    params = _prompt_params(model)
    with torch.no_grad():
        for p, t in zip(params, theta, strict=True):
            p.copy_(t)
    optimizer = torch.optim.Adam(params, lr=config.inner_lr)
    rng = random.Random(f"meta-init:{config.seed}:{step}")
    torch.manual_seed(config.seed * 1_000_003 + step)  # any dropout: a function of the step
    model.train()
    for _ in range(config.inner_steps):
        rows = rng.sample(dataset.train, min(config.batch_size, len(dataset.train)))
        loss = model(model.collate(rows)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in params]


def _settings(config: MetaInitConfig, sources: list[Dataset], backbone: Backbone) -> dict[str, Any]:
    """What a resumed run must share with the run it continues."""
    return {
        "meta_init": asdict(config),
        "sources": [d.name for d in sources],
        "backbone": backbone.describe(),
    }


def _resume(
    path: Path, holder: nn.Module, optimizer: torch.optim.Optimizer, settings: dict[str, Any]
) -> dict[str, Any]:
    kept = checkpoint_config(path)
    if kept != json.loads(json.dumps(settings)):
        raise ConfigError(
            f"{path}: made with other meta-init settings or sources; resume with the same "
            "ones, or start without --resume in a new --out folder"
        )
    return load_checkpoint(path, holder, optimizer)


def meta_init(
    backbone: Backbone,
    sources: list[Dataset],
    config: MetaInitConfig,
    out: str | Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
) -> Path:
    """Learn the init over `sources`; returns OUT/prompt.safetensors (written at the end).
    `stop_after` ends after that many outer steps as if interrupted (tests)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = _source_models(backbone, sources, config.method)
    holder = nn.Module()
    holder.theta = nn.ParameterList(
        [nn.Parameter(p.detach().clone()) for p in _prompt_params(models[0])]
    )
    optimizer = torch.optim.SGD(holder.theta.parameters(), lr=config.meta_lr)
    settings, path = _settings(config, sources, backbone), out / CHECKPOINT_FILE
    state: dict[str, Any] = {"step": 0, "history": []}
    if resume and path.is_file():
        state = _resume(path, holder, optimizer, settings)
    elif path.is_file():
        raise ConfigError(f"{path} exists: pass --resume to continue it, or use a new --out folder")
    order = random.Random(f"meta-init:{config.seed}:tasks")
    tasks = [order.randrange(len(sources)) for _ in range(config.outer_steps)]
    start = state["step"]
    for step in range(start, config.outer_steps):
        if stop_after is not None and step - start >= stop_after:
            return out / PROMPT_FILE
        task = tasks[step]
        theta = [t.detach().clone() for t in holder.theta]
        phi = _adapt(models[task], sources[task], theta, config, step)
        for param, after in zip(holder.theta, phi, strict=True):
            param.grad = param.detach() - after  # SGD on theta - phi moves theta towards phi
        optimizer.param_groups[0]["lr"] = config.meta_lr * (1 - step / config.outer_steps)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        moved = sum(float((a - b).norm()) for a, b in zip(phi, theta, strict=True))
        state["history"].append({"step": step + 1, "task": sources[task].name, "moved": moved})
        state["step"] = step + 1
        save_checkpoint(path, holder, optimizer, state, config=settings)
    return _write_prompt(models[0], holder, settings, state, out)


def _write_prompt(
    model: PromptModel,
    holder: nn.Module,
    settings: dict[str, Any],
    state: dict[str, Any],
    out: Path,
) -> Path:
    """The learned init as an ordinary prompt file (the first source's task framing)."""
    with torch.no_grad():
        for p, t in zip(_prompt_params(model), holder.theta, strict=True):
            p.copy_(t)
    atomic_write_text(out / "history.json", json.dumps(state["history"], indent=2))
    return model.save(out / PROMPT_FILE, meta_init=settings)


def run_meta_init(
    sources: list[str],
    backbone: str,
    config: MetaInitConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
) -> Path:
    """`meta_init` on built-in (or user) datasets named in `sources`, loaded before the
    backbone so a wrong name fails fast."""
    check_sources(len(sources))
    datasets = [load_dataset(name) for name in sources]
    for dataset in datasets:
        if dataset.task != "classification":
            raise ConfigError(
                f"meta-init --sources: {dataset.name!r} is a {dataset.task} task; give "
                "classification datasets (see `softprompt datasets`)"
            )
    where = resolve_device(device)
    model = load_backbone(backbone, device=where)
    model.model.to(where)
    return meta_init(model, datasets, config, out, resume=resume)
