"""Training hyper-parameters; errors name the key that is wrong."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from softprompt.errors import ConfigError


@dataclass
class TrainConfig:
    """`batch_size` is the global batch of one micro-step, split evenly across
    processes under DDP; an optimizer step sees `batch_size * grad_accum` rows.
    `eval_examples` caps the validation rows scored at each evaluation (0 = all), per task;
    a run config whose tasks are all k-shot (`data.shots`) defaults it to 0, and a cut
    is announced in one line (train/loop.py).
    `sampler` mixes several tasks' rows: "proportional" to their sizes, or "temperature"
    (p ~ n^(1/temperature)). `device`: auto, cpu, cuda or mps (softprompt/device.py).
    `overwrite` lets a fresh run replace a finished or interrupted one in its folder,
    `force_resume` continues a checkpoint whose config differs (see train/run_dir.py);
    `divergence_factor` stops a run whose smoothed loss passes that many times its
    first step's loss (see train/guard.py). `gradient_checkpointing` recomputes each
    backbone layer in the backward pass instead of keeping its activations: less memory,
    more time, the same gradients (see inject/checkpointing.py). `fsdp` shards the frozen
    backbone's layers over the processes of a `torchrun` launch (FSDP2; see
    softprompt/distributed.py): less memory per process, the same prompt.
    `head_lr`: the peak lr of the task head (a linear or tagging head) when it trains
    beside other parameters (a prompt, LoRA, the backbone), on the same warmup and decay
    (`head_lr_at`); None: train.lr. A head learns well at an lr that would wreck LoRA or
    deep prompts, and with one lr it moved at theirs (issue 22)."""

    steps: int = 160
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-2
    head_lr: float | None = None
    weight_decay: float = 1e-5
    warmup_steps: int = 10
    schedule: str = "linear"
    max_grad_norm: float = 1.0
    eval_every: int = 40
    eval_examples: int = 300
    eval_batch_size: int = 32
    patience: int = 0
    seed: int = 0
    bf16: bool = False
    device: str = "auto"
    sampler: str = "proportional"
    temperature: float = 2.0
    overwrite: bool = False
    force_resume: bool = False
    divergence_factor: float = 10.0
    gradient_checkpointing: bool = False
    fsdp: bool = False

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accum", "eval_every", "eval_batch_size")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: must be >= 1, got {getattr(self, key)}")
        if not 0 < self.lr < float("inf"):
            raise ConfigError(f"train.lr: must be a finite number > 0, got {self.lr}")
        if self.head_lr is not None and not 0 < self.head_lr < float("inf"):
            raise ConfigError(
                f"train.head_lr: must be a finite number > 0 (or unset: train.lr), got {self.head_lr}"
            )
        if not 1 < self.divergence_factor < float("inf"):
            raise ConfigError(
                f"train.divergence_factor: must be a finite number > 1, got {self.divergence_factor}"
            )
        if self.schedule not in ("linear", "cosine", "constant"):
            raise ConfigError(
                f"train.schedule: must be linear, cosine or constant, got {self.schedule!r}"
            )
        if self.sampler not in ("proportional", "temperature"):
            raise ConfigError(
                f"train.sampler: must be proportional or temperature, got {self.sampler!r}"
            )
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith(
            "cuda:"
        ):
            raise ConfigError(
                f"train.device: must be auto, cpu, cuda (or cuda:N) or mps, got {self.device!r}"
            )
        if not self.temperature > 0:
            raise ConfigError(f"train.temperature: must be > 0, got {self.temperature}")
        if self.warmup_steps < 0 or self.patience < 0 or self.eval_examples < 0:
            raise ConfigError(
                "train.warmup_steps, train.patience and train.eval_examples must be >= 0"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based): warmup then decay.

        A pure function of the step, so resuming needs no scheduler state."""
        import math

        if step < self.warmup_steps:
            return self.lr * (step + 1) / (self.warmup_steps + 1)
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        if self.schedule == "linear":
            return self.lr * max(0.0, 1.0 - progress)
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return self.lr

    def head_lr_at(self, step: int) -> float:
        """The task head's lr at `step`: `lr_at(step)` scaled by head_lr / lr."""
        scale = 1.0 if self.head_lr is None else self.head_lr / self.lr
        return self.lr_at(step) * scale
