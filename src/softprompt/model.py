"""A frozen backbone + one prompt method + one task, as a single trainable module.

The backbone is held as a plain attribute, not a submodule: `parameters()`,
`state_dict()` and DDP see only what trains (the prompt and any task head),
so saving, syncing and counting parameters cannot touch the frozen weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softprompt.backbones import Backbone
from softprompt.data import Example
from softprompt.errors import PromptFileError
from softprompt.inject import make_injector
from softprompt.methods import MethodContext, build_method
from softprompt.promptfile import check_backbone, read_prompt_file, save_prompt_file
from softprompt.tasks import TaskConfig, TaskOutput, build_task


class PromptModel(nn.Module):
    def __init__(
        self,
        backbone: Backbone,
        task_config: TaskConfig,
        method: str = "soft-prompt",
        method_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", backbone)
        object.__setattr__(self, "injector", make_injector(backbone))
        self.task = build_task(task_config, backbone)
        self.method_name = method
        self.method_options = dict(method_options or {})
        context = MethodContext(backbone=backbone, label_token_ids=self.task.label_token_ids())
        self.method = build_method(method, self.method_options, context)

    def forward(self, batch: dict[str, torch.Tensor]) -> TaskOutput:
        rows = batch["input_ids" if "input_ids" in batch else "pixel_values"].shape[0]
        return self.task(self.injector, self.method(rows), batch)

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        return self.task.collate(examples)

    @torch.no_grad()
    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """Label with class probabilities (classification) or generated text."""
        examples = [Example(text=t, label="") for t in texts]
        return self.task.predict(self.injector, self.method(len(texts)), examples)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def flattened(self) -> PromptModel:
        """The same prompt without training-only parts (an encoder, an MLP), as a model of
        the flat method they compute; the task head is kept. A method offers this by
        defining `flatten() -> (method name, options, method tensors) | None`; without
        it, or when it returns None, the model is flat already and is returned as is."""
        flatten = getattr(self.method, "flatten", None)
        flat_parts = flatten() if flatten is not None else None
        if flat_parts is None:
            return self
        name, options, tensors = flat_parts
        flat = PromptModel(self.backbone, self.task.config, name, options)
        state = {f"method.{key}": value for key, value in tensors.items()}
        state |= {k: v for k, v in self.state_dict().items() if k.startswith("task.")}
        flat.load_tensors(state, source=f"flattened {self.method_name}")
        return flat

    # -- prompt files ----------------------------------------------------
    def describe(self) -> dict[str, Any]:
        method_config = dataclasses.asdict(self.method.config)
        return {
            "method": {"name": self.method_name, "options": method_config},
            "task": self.task.config.to_dict(),
            "backbone": {"name": self.backbone.name, "fingerprint": self.backbone.fingerprint},
            "trainable_parameters": self.num_trainable(),
        }

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write the prompt file: trainable tensors + everything needed to rebuild."""
        return save_prompt_file(path, self.state_dict(), dict(self.describe(), **extra))

    @classmethod
    def load(
        cls, path: str | Path, backbone: Backbone, *, check_fingerprint: bool = True
    ) -> PromptModel:
        tensors, meta = read_prompt_file(path)
        if check_fingerprint:
            check_backbone(path, meta, backbone.name, backbone.fingerprint)
        model = cls(
            backbone,
            TaskConfig(**meta["task"]),
            method=meta["method"]["name"],
            method_options=meta["method"]["options"],
        )
        model.load_tensors(tensors, source=str(path))
        return model

    def load_tensors(self, tensors: dict[str, torch.Tensor], *, source: str) -> None:
        expected = self.state_dict()
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise PromptFileError(
                f"{source}: tensors do not match the method: missing {missing}, unexpected {extra}"
            )
        for name, tensor in tensors.items():
            if tensor.shape != expected[name].shape:
                raise PromptFileError(
                    f"{source}: tensor {name} has shape {tuple(tensor.shape)}, "
                    f"the backbone/method expects {tuple(expected[name].shape)}"
                )
        self.load_state_dict(tensors, strict=True)


def load_prompt_meta(path: str | Path) -> dict[str, Any]:
    """Metadata of a prompt file without building anything (for `softprompt info`)."""
    tensors, meta = read_prompt_file(path)
    meta["tensors"] = {name: list(t.shape) for name, t in tensors.items()}
    meta["file_bytes"] = Path(path).stat().st_size
    return meta
