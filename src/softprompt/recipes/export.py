"""`softprompt export`: a prompt file without its training-only parts, and a LoRA
baseline as a PEFT LoRA folder."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any

from peft import LoraConfig
from safetensors.torch import save as st_save

from softprompt.backbones import Backbone
from softprompt.errors import PromptFileError
from softprompt.files import atomic_write_bytes, atomic_write_text
from softprompt.interop.peft import CONFIG, WEIGHTS, base_model_name
from softprompt.model import load_prompt, load_prompt_meta
from softprompt.recipes.baselines import TunedModel, load_model


def export_prompt(
    path: str | Path, out: str | Path, backbone: Backbone | str | None = None
) -> Path:
    """Write `path`'s prompt without its training-only parts (see PromptModel.flattened).

    The training record (run config, metrics, dataset) is carried over, plus the
    method it was flattened from. The scores do not change."""
    model = load_prompt(path, backbone)
    meta = load_prompt_meta(path)
    carried = {k: v for k, v in meta.items() if k not in model.describe() and k != "tensors"}
    carried.pop("file_bytes", None)
    carried.setdefault("flattened_from", model.describe()["method"])  # kept on re-export
    return model.flattened().save(out, **carried)


def export_lora(path: str | Path, out: str | Path, backbone: Backbone | str | None = None) -> Path:
    """Write a LoRA baseline file (`train --compare lora`, a `compare` unit) as a PEFT LoRA
    folder: `PeftModel.from_pretrained` loads it, and `--backbone-adapter` merges it, so a
    domain LoRA trained here becomes the adapted backbone that task prompts train on.

    Only the adapter goes out: a LoRA run that also trained a task head is refused (a
    PEFT LoRA folder has no place for it), as is one on a backbone that is not a causal LM."""
    model = load_model(path, backbone)
    if not isinstance(model, TunedModel) or model.tune.kind != "lora":
        raise PromptFileError(
            f"{path}: not a LoRA baseline file; export prompts without --format peft"
        )
    if model.backbone.spec.kind != "causal-lm":
        raise PromptFileError(
            f"{path}: a LoRA on a {model.backbone.spec.kind} backbone; PEFT LoRA export "
            "covers causal LMs (task_type CAUSAL_LM)"
        )
    state = model.trained_state()
    heads = sorted(k for k in state if ".lora_" not in k)
    if heads:
        raise PromptFileError(
            f"{path}: also trained a task head ({heads[0]}); a PEFT LoRA folder holds the "
            "adapter only, so train the LoRA with label words (no --head) to export it"
        )
    tensors = {_peft_key(k): v.detach().float().contiguous().cpu() for k, v in state.items()}
    targets = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in tensors})
    config = _lora_config(model, targets)
    folder = Path(out)
    atomic_write_bytes(folder / WEIGHTS, st_save(tensors, metadata={"format": "pt"}))
    atomic_write_text(folder / CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def _peft_key(key: str) -> str:
    """'tuned.model.layers.0.self_attn.q_proj.lora_A.default.weight' ->
    'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' (PEFT's saved form)."""
    inner = key.removeprefix("tuned.").replace(".default.", ".")
    return f"base_model.model.{inner}"


def _lora_config(model: TunedModel, targets: list[str]) -> dict[str, Any]:
    """adapter_config.json as PEFT's LoraConfig writes it for these settings."""
    lora = LoraConfig(
        r=model.tune.r,
        lora_alpha=model.tune.alpha,
        lora_dropout=0.0,
        target_modules=targets,
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_name(model.backbone),
        inference_mode=True,
    )
    return json.loads(json.dumps(lora.to_dict(), default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"not JSON: {type(value).__name__}")
