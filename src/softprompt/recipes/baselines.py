"""What a prompt is compared with: the head-only linear probe, and two baselines that
change the backbone itself, LoRA (through PEFT) and full fine-tuning.

The linear probe is method `none`: the task head alone, same steps, same data. A prompt method never touches the frozen backbone; these two do, so they run on a private
copy of it (LoRA's shares the frozen tensors, see `_private_copy`) and train with the same loop, task head, steps and data as the prompts they
are compared with. `TunedModel` is a `PromptModel` (method `none`) whose copied backbone
is a registered submodule, so its trainable weights join `trainable_parameters()` and
the loop needs no change. Its file holds only what trained (LoRA's A/B matrices, or every
backbone weight's delta, plus the head): the honest file size of each baseline.

Learning rates: the loop has one Adam learning rate (right for the prompt and head). A
backbone weight needs a far smaller one, so both baselines scale their update instead:

* full fine-tuning stores each weight as ``W0 + s * D`` with ``D`` trainable and starting
  at zero; Adam moves ``D`` by about ``lr`` a step, so ``W`` moves by ``s * lr``
  (``backbone_lr = s * lr``). Weight decay pulls ``W`` back to ``W0`` (L2-SP), not to 0.
* LoRA's own ``alpha / r`` scale does the same for its ``B A`` product.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from softprompt.backbones import Backbone
from softprompt.config import BASELINE_KINDS, RunConfig
from softprompt.data import Dataset
from softprompt.errors import ConfigError, PromptFileError
from softprompt.methods import available_methods
from softprompt.methods import recommended_lr as method_lr
from softprompt.model import (
    PromptModel,
    build_model,
    check_known,
    file_backbone,
    load_prompt,
    load_prompt_meta,
)
from softprompt.promptfile import check_backbone, read_prompt_file, save_prompt_file
from softprompt.tasks.auto_verbalizer import resolve_verbalizer
from softprompt.tasks.base import TaskConfig
from softprompt.tasks.presets import task_config_for
from softprompt.train import TrainResult, train

# The loop lr `softprompt compare` trains each baseline at unless the user sets one (a
# prompt method names its own: `recommended_lr` on its class, methods/registry.py):
# * head-only: 1e-2, the linear probe's lr in this project's vision and wnut16 tables
#   (docs/benchmarks/vision.md, docs/methods/p-tuning-v2.md);
# * lora: 1e-3, PEFT's LoRA examples (1e-3 to 3e-4) and benchmarks/scale_table.py's
#   --lora-lr; at 3e-2 one seed of its movie-sentiment LoRA fell to one class;
# * full: 3e-2, so the backbone moves at backbone_lr_scale (3e-3) x 3e-2 = 9e-5 a step,
#   within the 5e-5 to 1e-4 usual for fully fine-tuning a small model (HF Trainer's
#   default 5e-5; BERT's 2e-5 to 5e-5), see the module docstring.
RECOMMENDED_LR: dict[str, float] = {"head-only": 1e-2, "lora": 1e-3, "full": 3e-2}


def recommended_lr(unit: str) -> float | None:
    """The lr a compare unit kind or registered method recommends; None for zero-shot
    (nothing trains) and for a method that names none (it trains at train.lr)."""
    if unit in RECOMMENDED_LR:
        return RECOMMENDED_LR[unit]
    return method_lr(unit) if unit in available_methods() else None


@dataclass
class TuneConfig:
    """`kind`: lora or full. LoRA: rank `r`, `alpha` (update scale alpha / r) on the
    attention modules named in `targets`. Full: `backbone_lr_scale` = backbone lr / head lr."""

    kind: str = "lora"
    r: int = 8
    alpha: float = 2.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    backbone_lr_scale: float = 3e-3

    def __post_init__(self) -> None:
        if self.kind not in BASELINE_KINDS:
            raise ConfigError(
                f"baseline.kind: use one of {', '.join(BASELINE_KINDS)}, not {self.kind!r}"
            )
        if self.r < 1 or not self.alpha > 0 or not self.backbone_lr_scale > 0:
            raise ConfigError("baseline: r must be >= 1, alpha and backbone_lr_scale > 0")


class _Delta(nn.Module):
    """W = W0 + scale * D: D is the stored (trainable) tensor, W0 a fixed buffer (the
    backbone's own storage, never written: no clone)."""

    def __init__(self, base: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("base", base.detach(), persistent=False)
        self.scale = scale

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        return self.base + self.scale * delta

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(weight)  # D starts at zero: W starts at W0


def _output_projection(model: nn.Module) -> set[int]:
    """Ids of the LM head's parameters (and so of an input embedding tied to it)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return {id(p) for p in head.parameters()} if head is not None else set()


def unfreeze_full(model: nn.Module, scale: float, keep: set[int] | None = None) -> nn.Module:
    """Every parameter of `model` trains as W0 + scale * D (see the module docstring),
    except those whose id is in `keep`: a causal LM's output projection stays frozen,
    since label words and generation read it directly (inject/head.py holds it once),
    and with it the input embedding tied to it."""
    keep = keep or set()
    for module in list(model.modules()):
        for name, param in list(module.named_parameters(recurse=False)):
            if id(param) in keep:
                continue
            parametrize.register_parametrization(module, name, _Delta(param, scale))
            getattr(module.parametrizations, name).original.requires_grad_(True)
    return model


def add_lora(model: nn.Module, config: TuneConfig) -> nn.Module:
    """PEFT LoRA adapters, in place, on the attention projections named in `config.targets`."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(config.targets)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if targets == TuneConfig().targets and not names & set(targets):
        targets = _peft_default_targets(model, targets)  # BERT: query, value; GPT-2: c_attn
    lora = LoraConfig(r=config.r, lora_alpha=config.alpha, target_modules=targets)
    try:
        inject_adapter_in_model(lora, model)
    except ValueError as e:
        raise ConfigError(f"baseline.targets: {e}") from e
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return model


def _private_copy(model: nn.Module, kind: str) -> nn.Module:
    """The backbone copy a baseline changes, a new module tree over the same frozen
    storage rather than a second backbone in memory (6 GB for a 1.5B model in float32).
    LoRA never changes a backbone tensor, so its tree holds the backbone's own. Full
    fine-tuning repoints each weight at D = 0 (parametrize's set_, which leaves the old
    storage alone), so its tree holds new Parameter objects over the same storage; a
    quantized weight (a tensor subclass) is swapped rather than repointed, so that
    backbone gets a real copy."""
    params = list(model.parameters())
    if kind == "lora":
        shared = {id(t): t for t in itertools.chain(params, model.buffers())}
    elif all(type(p.data) is torch.Tensor for p in params):
        shared = {id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in params}
    else:
        shared = {}
    return copy.deepcopy(model, memo=shared)


def _peft_default_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """PEFT's own LoRA targets for the architecture, where the default q/v names are absent."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type, targets))


class TunedModel(PromptModel):
    """The task head on a private, partly (LoRA) or wholly (full) trainable backbone copy,
    on any backbone kind (images, encoders, causal LMs)."""

    def __init__(self, backbone: Backbone, task_config: TaskConfig, tune: TuneConfig) -> None:
        if tune.kind == "full" and backbone.quantize:
            raise ConfigError(
                f"full fine-tuning trains every backbone weight, and this backbone's are "
                f"{backbone.quantize}-quantized (frozen); load it without --quantize, or "
                "use lora, whose adapters train beside quantized weights (as QLoRA's do)"
            )
        tuned = _private_copy(backbone.model, tune.kind)
        if tune.kind == "lora":
            add_lora(tuned, tune)
        else:
            unfreeze_full(tuned, tune.backbone_lr_scale, keep=_output_projection(tuned))
        super().__init__(dataclasses.replace(backbone, model=tuned), task_config, "none")
        self.tune = tune
        self.tuned = tuned  # a submodule: its trainable weights are trainable_parameters()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "baseline": dataclasses.asdict(self.tune)}

    def trained_state(self) -> dict[str, torch.Tensor]:
        """Only the tensors that train (the rest is the backbone, fingerprinted)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}

    def save(self, path: str | Path, **extra: Any) -> Path:
        return save_prompt_file(path, self.trained_state(), dict(self.describe(), **extra))

    @classmethod
    def load(  # type: ignore[override]
        cls, path: str | Path, backbone: Backbone, *, check_fingerprint: bool = True
    ) -> TunedModel:
        """A baseline file back on the backbone it was trained from."""
        tensors, meta = read_prompt_file(path)
        check_known(path, meta)
        if "baseline" not in meta:
            raise PromptFileError(
                f"{path}: not a LoRA / full fine-tuning file; load it as a prompt"
            )
        if check_fingerprint:
            check_backbone(path, meta, backbone.name, backbone.fingerprint)
        model = cls(backbone, TaskConfig(**meta["task"]), TuneConfig(**meta["baseline"]))
        expected = model.trained_state()
        if set(expected) != set(tensors):
            raise PromptFileError(
                f"{path}: tensors do not match the {meta['baseline']['kind']} baseline"
            )
        model.load_state_dict(tensors, strict=False)
        return model


def load_model(path: str | Path, backbone: Backbone | str | None = None) -> PromptModel:
    """A prompt file, or a LoRA / full fine-tuning file (a `compare` unit's), on its
    backbone (by default the one the file names): `eval` and `predict` read either."""
    meta = load_prompt_meta(path)
    if "baseline" not in meta:
        return load_prompt(path, backbone)
    if backbone is None or isinstance(backbone, str):
        backbone = file_backbone(meta, backbone)
    return TunedModel.load(path, backbone)


def head_only_baseline(
    backbone: Backbone,
    dataset: Dataset,
    config: RunConfig,
    *,
    resume: bool = False,
    progress: bool = True,
) -> tuple[PromptModel, TrainResult]:
    """Train the linear probe (method `none`, same task, same training config) into
    OUT/head-only, so a visual prompt's report always shows what the head alone reaches
    with the same steps. Returns the best probe, loaded back, and its `TrainResult`."""
    probe = build_model(backbone, dataset, {"name": "none"}, config.task)
    out = Path(config.out) / "head-only"
    run = {**config.to_dict(), "method": {"name": "none"}, "out": str(out)}
    result = train(
        probe, dataset, config.train, out, resume=resume, meta={"run": run}, progress=progress
    )
    return PromptModel.load(result.prompt_path, backbone), result


def tuned_baseline(
    backbone: Backbone,
    dataset: Dataset,
    config: RunConfig,
    tune: TuneConfig,
    *,
    resume: bool = False,
    progress: bool = True,
) -> tuple[TunedModel, TrainResult]:
    """Train LoRA or full fine-tuning (same task, same training config) into OUT/<kind>;
    returns the best model, loaded back, and its `TrainResult`."""
    task = resolve_verbalizer(backbone, dataset, config.task)  # auto: the prompts' words
    model = TunedModel(backbone, task_config_for(dataset, task), tune)
    out = Path(config.out) / tune.kind
    run = {**config.to_dict(), "baseline": dataclasses.asdict(tune), "out": str(out)}
    result = train(
        model, dataset, config.train, out, resume=resume, meta={"run": run}, progress=progress
    )
    return TunedModel.load(result.prompt_path, backbone), result
