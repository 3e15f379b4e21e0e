"""Prompt files <-> Hugging Face PEFT prompt-learning adapters, with equal logits both ways.

A PEFT adapter folder holds `adapter_config.json` and `adapter_model.safetensors`. For
the prompt-learning types its weights are what the frozen model sees at inference, never
the training-only encoder (PEFT's `save_pretrained` stores `get_prompt_embedding_to_save`,
and `from_pretrained` loads only `prompt_embeddings`):

| softprompt        | PEFT type               | adapter_model.safetensors                     |
|-------------------|-------------------------|-----------------------------------------------|
| soft-prompt       | PROMPT_TUNING           | prompt_embeddings (n, d)                      |
| p-tuning          | P_TUNING                | prompt_embeddings (n, d): the encoder's output|
| prefix-tuning     | PREFIX_TUNING           | prompt_embeddings (n, L * 2 * kvh * hd)       |
| multitask-prompt  | MULTITASK_PROMPT_TUNING | prompt_embeddings P* (n, d), prefix_task_cols |
|                   |                         | U (1, n, r), prefix_task_rows Vᵀ (1, r, d)    |

So P-tuning's encoder and prefix tuning's MLP are exported as what they compute: PEFT's
format has no place for encoder weights (`_load_adapter_state_dict` loads the embedding
table alone), and where the architectures agree they agree only in part: PEFT's LSTM
encoder of width h is ours of width 2h (tested), its MLP encoder has a third layer, and
its prefix MLP maps a kvh * hd input, ours a d one (equal only without GQA). A
multitask prompt keeps its structure (one task, task id 0): PEFT computes
P* ∘ (U Vᵀ) as we do, and P* stays available to start a new task from.

Order of BOS. PEFT puts virtual tokens in front of the input ids, BOS included
([v, BOS, text]); softprompt puts them after BOS ([BOS, v, text]) and a K/V prefix before
it ([kv, BOS, text], as PEFT). On a backbone whose tokenizer adds BOS:
- export folds BOS into the adapter as virtual token 0 (MPT: one extra rank whose row is
  all ones), and the adapter's input ids must come without BOS
  (`tokenizer(text, add_special_tokens=False)`); `softprompt.json` in the folder says so;
- import of a PEFT-made embedding adapter runs its virtual tokens through the frozen
  model once and keeps their keys/values as a direct prefix-tuning prompt, which is
  exactly [v, BOS, text]; an adapter this module exported is unfolded back instead.
Backbones without BOS (GPT-2, SmolLM2, Qwen) need neither: the layouts coincide.

Only safetensors and JSON are read; a pickled `adapter_model.bin` is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from softprompt.backbones import Backbone
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.files import atomic_write_bytes, atomic_write_text
from softprompt.inject import CausalInjector, embedding_table, token_embeddings
from softprompt.model import PromptModel, load_prompt
from softprompt.tasks import TaskConfig
from softprompt.validate import check_fields

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
SIDECAR = "softprompt.json"
SIDECAR_FORMAT = "softprompt-peft/1"
# Hub ids a built-in backbone's adapters may name as their base model.
BASE_ALIASES = {
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M"),
    "minilm-l6": ("sentence-transformers/all-MiniLM-L6-v2",),
}


class PeftAdapterError(SoftPromptError):
    """A PEFT adapter folder that cannot be read, or a prompt PEFT cannot hold."""


# -- export ------------------------------------------------------------------------------


def export_peft(
    prompt: str | Path | PromptModel, out_dir: str | Path, backbone: Backbone | str | None = None
) -> Path:
    """Write `prompt` (a prompt file or a loaded model) as a PEFT adapter folder that
    `PeftModel.from_pretrained(base_model, out_dir)` loads with the same logits."""
    source = "the prompt" if isinstance(prompt, PromptModel) else str(prompt)
    model = prompt if isinstance(prompt, PromptModel) else load_prompt(prompt, backbone)
    _check_exportable(model, source)
    fold = model.method_name != "prefix-tuning" and model.backbone.spec.bos_token_id is not None
    with torch.no_grad():
        peft_type, tensors, fields = _EXPORTERS[model.method_name](model, fold)
    n_virtual = tensors["prompt_embeddings"].shape[0]
    config = _adapter_config(model.backbone, peft_type, n_virtual, fields)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PeftAdapterError(f"--out {out}: is a file; give a folder for the adapter")
    clean = {k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(out / WEIGHTS, st_save(clean, metadata={"format": "pt"}))
    atomic_write_text(out / CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / SIDECAR, json.dumps(_sidecar(model, peft_type, fold), indent=2) + "\n")
    return out


def _check_exportable(model: PromptModel, source: str) -> None:
    """PEFT's prompt-learning adapters hold front prompts of a causal LM, and nothing else."""
    if model.backbone.spec.kind != "causal-lm":
        raise PeftAdapterError(
            f"{source}: backbone {model.backbone.name!r} is not a causal LM (kind "
            f"{model.backbone.spec.kind}); PEFT export covers causal LMs (task_type CAUSAL_LM) only"
        )
    if model.method_name not in _EXPORTERS:
        raise PeftAdapterError(
            f"{source}: method {model.method_name!r} has no PEFT adapter type; exportable: "
            f"{', '.join(_EXPORTERS)}"
        )
    heads = sorted(k for k in model.state_dict() if k.startswith("task."))
    if heads:
        raise PeftAdapterError(
            f"{source}: holds a trained task head ({heads[0]}); a PEFT prompt adapter holds no "
            "head, so train the prompt with task.head verbalizer to export it"
        )
    template = getattr(model.task, "template", None)
    if template is not None and getattr(template, "has_slots", False):
        raise PeftAdapterError(
            f"{source}: its template places virtual tokens in {{p}} slots; PEFT puts them in "
            "front only, so export a prompt trained with a template without slots"
        )


def _bos_embedding(backbone: Backbone) -> torch.Tensor:
    """BOS as the model's first layer sees it (scaling included): (1, d)."""
    bos = token_embeddings(backbone, torch.tensor([backbone.spec.bos_token_id]))  # (1, d)
    return bos.to(embedding_table(backbone).device)  # where the prompt's tokens are


def _front_tokens(model: PromptModel, fold: bool) -> torch.Tensor:
    tokens = model.prompt().embeds.float()  # (n, d): p-tuning's encoder output, run once
    return torch.cat([_bos_embedding(model.backbone), tokens]) if fold else tokens  # (n', d)


def _export_soft_prompt(model: PromptModel, fold: bool):
    fields = {"prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None}
    return "PROMPT_TUNING", {"prompt_embeddings": _front_tokens(model, fold)}, fields


def _export_p_tuning(model: PromptModel, fold: bool):
    """The encoder's output. The config names the encoder for the record: PEFT's LSTM
    encoder of width h is ours of width 2h exactly; its MLP has a third layer."""
    config = model.method.config
    lstm = config.encoder == "lstm"
    fields = {
        "encoder_reparameterization_type": config.encoder.upper(),
        "encoder_hidden_size": config.hidden // 2 if lstm else config.hidden,
        "encoder_num_layers": 2,
        "encoder_dropout": 0.0,
    }
    return "P_TUNING", {"prompt_embeddings": _front_tokens(model, fold)}, fields


def _export_prefix_tuning(model: PromptModel, fold: bool):
    """PEFT views its (n, L * 2 * kvh * hd) table as (n, L, 2, kvh, hd): ours permuted."""
    kv = model.prompt().kv  # L x 2 x (kvh, n, hd)
    stacked = torch.stack([torch.stack(pair) for pair in kv])  # (L, 2, kvh, n, hd)
    n = stacked.shape[3]
    flat = stacked.permute(3, 0, 1, 2, 4).reshape(n, -1)  # (n, L * 2 * kvh * hd)
    spec = model.backbone.spec
    fields = {
        "prefix_projection": False,  # the table is the K/V itself, not an MLP's input
        "encoder_hidden_size": spec.num_kv_heads * spec.head_dim,
        "token_dim": spec.num_kv_heads * spec.head_dim,
        "num_attention_heads": spec.num_kv_heads,
    }
    return "PREFIX_TUNING", {"prompt_embeddings": flat.float()}, fields


def _export_multitask_prompt(model: PromptModel, fold: bool):
    """P* and this task's factors as PEFT's task 0: PEFT's cols are our rows (n, r), its
    rows our colsᵀ (r, d). Folding BOS adds a row (BOS in P*) and a rank whose product
    row is all ones there and zero elsewhere, so P_k is unchanged behind it."""
    method = model.method
    shared = method.shared.embeddings.float()  # (n, d)
    rows, cols = method.task_rows.float(), method.task_cols.T.float()  # (n, r), (r, d)
    if fold:
        n, r = rows.shape
        shared = torch.cat([_bos_embedding(model.backbone), shared])  # (n + 1, d)
        rows = shared.new_zeros(n + 1, r + 1)  # (n + 1, r + 1)
        rows[0, r] = 1.0  # BOS row: scale 1 from the extra rank alone
        rows[1:, :r] = method.task_rows.float()
        cols = torch.cat([cols, cols.new_ones(1, cols.shape[1])])  # (r + 1, d)
    tensors = {
        "prompt_embeddings": shared,
        "prefix_task_cols": rows.unsqueeze(0),  # (1, n, r)
        "prefix_task_rows": cols.unsqueeze(0),  # (1, r, d)
    }
    fields = {
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "prompt_tuning_init_state_dict_path": None,
        "prompt_tuning_init_task": 0,
        "num_ranks": rows.shape[1],
        "num_tasks": 1,
    }
    return "MULTITASK_PROMPT_TUNING", tensors, fields


# method name -> its exporter (each returns the PEFT type it writes); a method not here is
# refused by name, so a new method needs no entry unless PEFT has a type for it
_EXPORTERS = {
    "soft-prompt": _export_soft_prompt,
    "p-tuning": _export_p_tuning,
    "prefix-tuning": _export_prefix_tuning,
    "multitask-prompt": _export_multitask_prompt,
}


def _adapter_config(
    backbone: Backbone, peft_type: str, n_virtual: int, fields: dict[str, Any]
) -> dict[str, Any]:
    """adapter_config.json with the fields PEFT 0.21 writes for the type (and no others)."""
    spec = backbone.spec
    config = {
        "peft_type": peft_type,
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name(backbone),
        "revision": None,
        "inference_mode": True,
        "num_virtual_tokens": n_virtual,
        "token_dim": spec.hidden_size,
        "num_transformer_submodules": 1,
        "num_attention_heads": spec.num_heads,
        "num_layers": spec.num_layers,
        "modules_to_save": None,
        "auto_mapping": None,
    }
    return config | fields


def base_model_name(backbone: Backbone) -> str:
    """What a PEFT user passes to `from_pretrained` to get these weights: the local folder
    they were read from when there is one (a built-in's cached GGUF conversion, a
    package's model folder, the user's own), since a built-in dequantized from a Q4_1
    GGUF is not the hub checkpoint its name suggests; else the hub id when known, else
    softprompt's backbone name. Import still accepts the hub ids (`BASE_ALIASES`)."""
    local = getattr(backbone.model.config, "_name_or_path", "") or ""
    if local and Path(local).is_dir():
        return str(Path(local).resolve())
    aliases = BASE_ALIASES.get(backbone.name)
    if aliases:
        return aliases[0]
    return getattr(backbone.model.config, "_name_or_path", "") or backbone.name


def _sidecar(model: PromptModel, peft_type: str, fold: bool) -> dict[str, Any]:
    """What PEFT's files cannot say: the exact backbone, the task framing, BOS handling."""
    described = model.describe()
    how = (
        "input ids WITHOUT BOS (tokenizer(text, add_special_tokens=False)): virtual token 0 is BOS"
        if fold
        else "input ids as the tokenizer makes them"
    )
    return {
        "format": SIDECAR_FORMAT,
        "exported_as": peft_type,
        "backbone": described["backbone"],
        "method": described["method"],
        "task": described["task"],
        "bos_folded": fold,
        "input_ids": how,
    }


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
