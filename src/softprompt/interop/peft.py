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

On an encoder-decoder (T5, BART) soft prompts and P-tuning prompts export as SEQ_2_SEQ_LM
adapters: both libraries put virtual tokens in front of the encoder's input, so nothing
is folded; PEFT's table has 2n rows and its prompt tuning reads the first n (ours; the
rest are zeros). Its seq2seq prefix feeds decoder layer i the table's layer 2i mod L K/V,
so a per-layer prefix has no PEFT form and is refused.

Only safetensors and JSON are read; a pickled `adapter_model.bin` is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from softprompt.backbones import Backbone
from softprompt.errors import SoftPromptError
from softprompt.files import atomic_write_bytes, atomic_write_text
from softprompt.inject import embedding_table, token_embeddings
from softprompt.model import PromptModel, load_prompt

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
    seq2seq = model.backbone.spec.kind == "seq2seq-lm"
    fold = (
        not seq2seq  # on an encoder-decoder PEFT's virtual tokens come first, as ours do
        and model.method_name != "prefix-tuning"
        and model.backbone.spec.bos_token_id is not None
    )
    with torch.no_grad():
        peft_type, tensors, fields = _EXPORTERS[model.method_name](model, fold)
    n_virtual = tensors["prompt_embeddings"].shape[0]
    if seq2seq:  # PEFT's SEQ_2_SEQ_LM table has 2n rows; its prompt tuning reads the first n
        table = tensors["prompt_embeddings"]
        tensors = {"prompt_embeddings": torch.cat([table, torch.zeros_like(table)])}  # (2n, d)
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
    """PEFT's prompt-learning adapters hold front prompts of a causal LM, or of an
    encoder-decoder's encoder, and nothing else."""
    kind = model.backbone.spec.kind
    if kind == "seq2seq-lm" and model.method_name not in _SEQ2SEQ_EXPORTS:
        raise PeftAdapterError(
            f"{source}: on an encoder-decoder PEFT export covers {', '.join(_SEQ2SEQ_EXPORTS)} "
            f"(task_type SEQ_2_SEQ_LM), not {model.method_name}: PEFT's seq2seq prefix feeds "
            "its decoder layers repeated slots of one table, which a per-layer prefix is not"
        )
    if kind not in ("causal-lm", "seq2seq-lm"):
        raise PeftAdapterError(
            f"{source}: backbone {model.backbone.name!r} is not a causal LM (kind "
            f"{kind}); PEFT export covers causal LMs (task_type CAUSAL_LM) and T5/BART "
            "soft prompts (SEQ_2_SEQ_LM) only"
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


# methods whose prompt PEFT's SEQ_2_SEQ_LM adapters hold: virtual tokens before the encoder
_SEQ2SEQ_EXPORTS = ("soft-prompt", "p-tuning")


def _adapter_config(
    backbone: Backbone, peft_type: str, n_virtual: int, fields: dict[str, Any]
) -> dict[str, Any]:
    """adapter_config.json with the fields PEFT 0.21 writes for the type (and no others)."""
    spec = backbone.spec
    seq2seq = spec.kind == "seq2seq-lm"
    config = {
        "peft_type": peft_type,
        "task_type": "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM",
        "base_model_name_or_path": base_model_name(backbone),
        "revision": None,
        "inference_mode": True,
        "num_virtual_tokens": n_virtual,
        "token_dim": spec.hidden_size,
        "num_transformer_submodules": 2 if seq2seq else 1,
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
