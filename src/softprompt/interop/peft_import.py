"""PEFT prompt-learning adapters -> prompt files (`softprompt import-peft`), with the
logits PEFT gives. The formats, BOS order and what each type holds are described in
`softprompt.interop.peft` (export); this is the reading side, kept apart because it
checks every field of a folder a user brings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from softprompt.backbones import Backbone
from softprompt.errors import ConfigError
from softprompt.inject import CausalInjector
from softprompt.interop.peft import (
    BASE_ALIASES,
    CONFIG,
    SIDECAR,
    SIDECAR_FORMAT,
    WEIGHTS,
    PeftAdapterError,
)
from softprompt.model import PromptModel
from softprompt.tasks import TaskConfig
from softprompt.validate import check_fields

# -- import ------------------------------------------------------------------------------


def import_peft(
    adapter_dir: str | Path,
    backbone: Backbone,
    out: str | Path,
    *,
    task_id: int | None = None,
    task: dict[str, Any] | None = None,
    trust_base: bool = False,
) -> Path:
    """Read a PEFT prompt-learning adapter and write a prompt file whose logits on
    `backbone` equal PEFT's. `task_id` picks one task of a multitask adapter; `task` sets
    the framing (default: the exporter's, else generation with template "{text}");
    `trust_base` accepts an adapter whose base model has another name."""
    folder = Path(adapter_dir)
    config, tensors = read_adapter(folder)
    sidecar = _read_sidecar(folder)
    _check_base(folder, config, sidecar, backbone, trust_base)
    if backbone.spec.kind != "causal-lm":
        raise PeftAdapterError(
            f"{folder}: --backbone {backbone.name} is not a causal LM (kind "
            f"{backbone.spec.kind}); PEFT import covers causal LMs only"
        )
    if task_id is not None and config["peft_type"] != "MULTITASK_PROMPT_TUNING":
        raise ConfigError(
            f"--task-id: {folder} holds a {config['peft_type']} adapter (one prompt); leave it out"
        )
    unfold = bool(
        sidecar and sidecar.get("bos_folded") and sidecar.get("exported_as") == config["peft_type"]
    )
    method, options, state = _IMPORTERS[config["peft_type"]](
        folder, config, tensors, backbone, unfold, task_id
    )
    model = PromptModel(backbone, _task_config(task, sidecar), method, options)
    model.load_tensors(state, source=str(folder / WEIGHTS))
    origin = {
        "peft_type": config["peft_type"],
        "adapter": str(folder),
        "base_model_name_or_path": config.get("base_model_name_or_path"),
        "task_id": task_id,
    }
    return model.save(out, imported_from=origin)


def _task_config(task: dict[str, Any] | None, sidecar: dict[str, Any] | None) -> TaskConfig:
    """The user's framing, else the exporter's, else plain text generation."""
    values = task or (sidecar or {}).get("task") or {"kind": "generation", "template": "{text}"}
    hints = {"verbalizer": dict[str, str | list[str]] | None}
    checked = check_fields("task", TaskConfig, values, hints)
    problems = checked.unknown + checked.problems
    if problems:
        raise ConfigError(f"--task: {'; '.join(problems[:5])}")
    return TaskConfig(**checked.values)


def read_adapter(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """adapter_config.json and adapter_model.safetensors, checked; never a pickle."""
    if not folder.is_dir():
        raise PeftAdapterError(f"{folder}: no such adapter folder")
    config = _read_json(
        folder / CONFIG, "a PEFT adapter folder holds it (save_pretrained writes it)"
    )
    kind = config.get("peft_type")
    if kind not in _IMPORTERS:
        raise PeftAdapterError(
            f"{folder / CONFIG}: peft_type {kind!r} is not a prompt-learning type softprompt "
            f"imports; supported: {', '.join(_IMPORTERS)}"
        )
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise PeftAdapterError(
            f"{folder / CONFIG}: task_type {config.get('task_type')!r}; softprompt imports "
            "CAUSAL_LM prompt adapters only"
        )
    if (config.get("num_transformer_submodules") or 1) != 1:
        raise PeftAdapterError(
            f"{folder / CONFIG}: num_transformer_submodules "
            f"{config['num_transformer_submodules']} (an encoder-decoder adapter); softprompt "
            "imports decoder-only adapters"
        )
    if _int_field(folder, config, "num_virtual_tokens", None) is None:
        raise PeftAdapterError(
            f"{folder / CONFIG}: num_virtual_tokens missing; re-save the adapter"
        )
    return config, _read_weights(folder)


def _read_json(path: Path, why: str) -> dict[str, Any]:
    if not path.is_file():
        raise PeftAdapterError(f"{path}: missing; {why}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:  # hostile nesting: json recurses once per level
        raise PeftAdapterError(
            f"{path}: JSON nested too deeply to read; re-save the adapter with save_pretrained"
        ) from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise PeftAdapterError(
            f"{path}: not readable JSON ({exc}); re-save the adapter with save_pretrained"
        ) from None
    if not isinstance(value, dict):
        raise PeftAdapterError(
            f"{path}: not a JSON object; re-save the adapter with save_pretrained"
        )
    return value


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS
    if not path.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise PeftAdapterError(
                f"{folder / 'adapter_model.bin'}: pickled weights are never loaded (unpickling "
                "can run code); convert them where you trust the file: load the adapter in PEFT "
                f"and save_pretrained it (safetensors, the default), which writes {WEIGHTS}"
            )
        raise PeftAdapterError(f"{path}: missing; save the adapter with save_pretrained")
    try:
        tensors = st_load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as exc:
        raise PeftAdapterError(
            f"{path}: not a readable safetensors file (truncated or corrupt: {exc}); save the "
            "adapter again"
        ) from None
    bad = sorted(
        k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()
    )
    if bad:
        raise PeftAdapterError(
            f"{path}: tensor(s) {', '.join(bad)} hold NaN/inf values; train again"
        )
    return {k: t.float() for k, t in tensors.items()}


def _read_sidecar(folder: Path) -> dict[str, Any] | None:
    if not (folder / SIDECAR).exists():
        return None
    sidecar = _read_json(folder / SIDECAR, "")
    if sidecar.get("format") != SIDECAR_FORMAT:
        raise PeftAdapterError(
            f"{folder / SIDECAR}: format {sidecar.get('format')!r} is not {SIDECAR_FORMAT!r}; "
            "delete the file to import the adapter as PEFT made it"
        )
    return sidecar


def _check_base(
    folder: Path,
    config: dict[str, Any],
    sidecar: dict[str, Any] | None,
    backbone: Backbone,
    trust_base: bool,
) -> None:
    """Same weights, when the folder says so (fingerprint), else the same base name."""
    if trust_base:
        return
    if sidecar is not None:
        want = sidecar.get("backbone") or {}
        if want.get("fingerprint") != backbone.fingerprint:
            raise PeftAdapterError(
                f"{folder / SIDECAR}: exported from backbone {want.get('name')!r} (fingerprint "
                f"{want.get('fingerprint')}), not {backbone.name!r} ({backbone.fingerprint}); "
                f"import it with --backbone {want.get('name')}"
            )
        return
    base = config.get("base_model_name_or_path")
    if base and not _same_name(str(base), backbone):
        raise PeftAdapterError(
            f"{folder / CONFIG}: adapter made for base model {base!r}, but the backbone is "
            f"{backbone.name!r}; import it with --backbone for that model (or --trust-base if "
            "it is the same weights under another name)"
        )


def _same_name(base: str, backbone: Backbone) -> bool:
    names = {backbone.name, getattr(backbone.model.config, "_name_or_path", "") or ""}
    names |= set(BASE_ALIASES.get(backbone.name, ()))
    keys = {n.rstrip("/").lower() for n in names if n} | {
        Path(n.rstrip("/")).name.lower() for n in names if n
    }
    return base.rstrip("/").lower() in keys or Path(base.rstrip("/")).name.lower() in keys


def _tensor(
    folder: Path, tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], what: str
):
    """A named adapter tensor of the shape the backbone needs, or an error saying which differs."""
    if name not in tensors:
        raise PeftAdapterError(
            f"{folder / WEIGHTS}: no tensor {name!r} (has {sorted(tensors)}); save the adapter "
            "again with save_pretrained"
        )
    got = tuple(tensors[name].shape)
    if got != shape:
        raise PeftAdapterError(
            f"{folder / WEIGHTS}: {name} has shape {got} but this backbone needs {shape} "
            f"({what}); the adapter was made for another base model: import it with --backbone "
            "for that model"
        )
    return tensors[name]


def _int_field(folder: Path, config: dict[str, Any], key: str, default: int | None) -> int | None:
    """An optional positive integer of adapter_config.json."""
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PeftAdapterError(
            f"{folder / CONFIG}: {key} must be a positive integer, got {value!r}; re-save the "
            "adapter with save_pretrained"
        )
    return value


def _check_dims(folder: Path, config: dict[str, Any], backbone: Backbone, token_dim: int) -> None:
    spec = backbone.spec
    for key, want in (("token_dim", token_dim), ("num_layers", spec.num_layers)):
        got = _int_field(folder, config, key, None)
        if got is not None and got != want:
            raise PeftAdapterError(
                f"{folder / CONFIG}: {key} {got} but backbone {backbone.name!r} has {want}; the "
                f"adapter was made for another base model ({config.get('base_model_name_or_path')!r}): "
                "import it with --backbone for that model"
            )


@torch.no_grad()
def front_kv(backbone: Backbone, embeds: torch.Tensor) -> torch.Tensor:
    """The frozen model's keys/values of (n, d) embeddings at positions 0..n-1, before any
    token (where PEFT puts virtual tokens): (L, 2, kvh, n, hd). Tokens in front of a causal
    decoder never see what follows, so these K/V stand in for the tokens exactly."""
    kv = CausalInjector(backbone).token_kv(embeds, after_bos=False)  # L x 2 x (kvh, n, hd)
    return torch.stack([torch.stack(pair) for pair in kv])  # (L, 2, kvh, n, hd)


def _as_prompt(backbone: Backbone, tokens: torch.Tensor, unfold: bool):
    """PEFT's front tokens as ours: a soft prompt where the layouts agree, else their K/V."""
    n = tokens.shape[0]
    if backbone.spec.bos_token_id is None:
        return "soft-prompt", {"n_tokens": n, "init": "random"}, {"method.embeddings": tokens}
    if unfold:
        options = {"n_tokens": n - 1, "init": "random"}
        return "soft-prompt", options, {"method.embeddings": tokens[1:]}
    options = {"n_tokens": n, "init": "random", "reparameterize": False}
    return "prefix-tuning", options, {"method.prefix": front_kv(backbone, tokens)}


def _import_embeddings(folder, config, tensors, backbone, unfold, task_id):
    """PROMPT_TUNING and P_TUNING: the saved tokens are what the model sees."""
    d, n = backbone.spec.hidden_size, config["num_virtual_tokens"]
    _check_dims(folder, config, backbone, d)
    tokens = _tensor(folder, tensors, "prompt_embeddings", (n, d), f"{n} tokens x hidden {d}")
    return _as_prompt(backbone, tokens, unfold)


def _import_prefix(folder, config, tensors, backbone, unfold, task_id):
    """PREFIX_TUNING: the saved table is the K/V (PEFT saves the MLP's output)."""
    spec = backbone.spec
    n, kv_dim = config["num_virtual_tokens"], spec.num_kv_heads * spec.head_dim
    _check_dims(folder, config, backbone, kv_dim)
    width = spec.num_layers * 2 * kv_dim
    flat = _tensor(folder, tensors, "prompt_embeddings", (n, width), f"{n} x layers*2*kv dim")
    kv = flat.view(n, spec.num_layers, 2, spec.num_kv_heads, spec.head_dim)  # (n, L, 2, kvh, hd)
    options = {"n_tokens": n, "init": "random", "reparameterize": False}
    return "prefix-tuning", options, {"method.prefix": kv.permute(1, 2, 3, 0, 4).contiguous()}


def _import_multitask(folder, config, tensors, backbone, unfold, task_id):
    """MULTITASK_PROMPT_TUNING: one task's P* ∘ (U Vᵀ), as a multitask prompt where the
    layouts agree (P* kept to start new tasks from), else as its K/V."""
    d, n = backbone.spec.hidden_size, config["num_virtual_tokens"]
    _check_dims(folder, config, backbone, d)
    tasks = _int_field(folder, config, "num_tasks", 1)
    rank = _int_field(folder, config, "num_ranks", 1)
    if task_id is None and tasks > 1:
        raise PeftAdapterError(
            f"{folder / CONFIG}: holds {tasks} tasks; pick one with --task-id 0..{tasks - 1}"
        )
    task_id = task_id or 0
    if not 0 <= task_id < tasks:
        raise PeftAdapterError(f"--task-id {task_id}: {folder} holds tasks 0..{tasks - 1}")
    shared = _tensor(folder, tensors, "prompt_embeddings", (n, d), f"{n} tokens x hidden {d}")
    cols = _tensor(folder, tensors, "prefix_task_cols", (tasks, n, rank), "tasks x tokens x rank")
    rows = _tensor(folder, tensors, "prefix_task_rows", (tasks, rank, d), "tasks x rank x hidden")
    u, v = cols[task_id], rows[task_id].T  # (n, r), (d, r)
    if backbone.spec.bos_token_id is not None and not unfold:
        return _as_prompt(backbone, shared * (u @ v.T), unfold=False)  # (n, d)
    if unfold:
        shared, u, v, rank = shared[1:], u[1:, :-1], v[:, :-1], rank - 1
        n -= 1
    options = {"n_tokens": n, "init": "random", "rank": rank}
    state = {"method.shared.embeddings": shared, "method.task_rows": u, "method.task_cols": v}
    return "multitask-prompt", options, {k: t.contiguous() for k, t in state.items()}


_IMPORTERS = {
    "PROMPT_TUNING": _import_embeddings,
    "P_TUNING": _import_embeddings,
    "PREFIX_TUNING": _import_prefix,
    "MULTITASK_PROMPT_TUNING": _import_multitask,
}
