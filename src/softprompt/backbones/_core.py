"""The `Backbone` wrapper: a frozen HF model, its tokenizer, its shape facts and a fingerprint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from softprompt.backbones._placement import input_device
from softprompt.errors import BackboneError

KINDS = ("causal-lm", "encoder", "vision", "seq2seq-lm")
LM_KINDS = ("causal-lm", "seq2seq-lm")  # kinds with an LM head over the vocabulary

# The dtypes a frozen backbone may be held in (`--dtype`, `backbone.dtype`).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_CHOICES = ("auto", *DTYPES)
QUANTIZATIONS = ("int8", "nf4")  # `--quantize`: torchao int8 weight-only, bitsandbytes NF4

# Bump when the fingerprint recipe changes, so cached fingerprints are not reused.
FINGERPRINT_VERSION = 1

# model_type values that are decoder-only language models, for configs that do not
# list their architectures.
CAUSAL_MODEL_TYPES = frozenset(
    {
        "bloom",
        "codegen",
        "cohere",
        "falcon",
        "gemma",
        "gemma2",
        "gemma3_text",
        "gpt2",
        "gpt_bigcode",
        "gpt_neo",
        "gpt_neox",
        "gptj",
        "granite",
        "llama",
        "mistral",
        "mixtral",
        "mpt",
        "olmo",
        "olmo2",
        "opt",
        "phi",
        "phi3",
        "qwen2",
        "qwen3",
        "smollm3",
        "stablelm",
        "starcoder2",
    }
)

_CAUSAL_CLASS_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class BackboneSpec:
    """Shape facts about a backbone that prompt code needs."""

    kind: str  # "causal-lm", "encoder", "vision" or "seq2seq-lm" (T5, BART)
    architecture: str  # config.model_type, e.g. "llama", "gpt2", "bert"
    hidden_size: int
    num_layers: int  # decoder layers on an encoder-decoder (where prefix K/V go)
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int  # rows of the input embedding matrix
    # The id the tokenizer puts in front (BOS for llama-style tokenizers that add one,
    # [CLS] for BERT); None if the tokenizer adds nothing in front.
    bos_token_id: int | None
    pad_token_id: int  # the tokenizer's pad id (eos when the tokenizer had no pad)
    eos_token_id: int | None


@dataclass(eq=False)
class Backbone:
    """A frozen pretrained transformer with its tokenizer."""

    name: str  # built-in name or the path given
    model: torch.nn.Module = field(repr=False)  # frozen, eval mode
    tokenizer: Any = field(repr=False)  # a transformers PreTrainedTokenizerBase
    spec: BackboneSpec
    # Identifies the SOURCE weights (hashed as float32 before any cast or quantization), so a
    # prompt trained on a bf16 or int8 copy of a checkpoint loads on its float32 copy.
    fingerprint: str
    quantize: str | None = None  # "int8", "nf4" or None: how the held weights were reduced

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the frozen model computes in: its input embeddings' (a vision model's
        patch embedding has no single weight: its first floating parameter's)."""
        weight = getattr(self.input_embeddings(), "weight", None)
        if isinstance(weight, torch.Tensor):
            return weight.dtype
        return next(p.dtype for p in self.model.parameters() if p.is_floating_point())

    @property
    def input_device(self) -> torch.device:
        """Where token ids and prompts go: the input embeddings' execution device, which is
        not where every weight lives once `--device-map` spreads the model."""
        return input_device(self.model)

    def describe(self) -> dict[str, str]:
        """What a prompt file records about its backbone: the fingerprint decides whether a
        prompt loads; dtype and quantization say how it was trained (informational)."""
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "dtype": dtype_name(self.dtype),
            "quantize": self.quantize or "none",
        }

    def input_embeddings(self) -> torch.nn.Embedding:
        """The token embedding table (``model.get_input_embeddings()``)."""
        return self.model.get_input_embeddings()

    def output_embeddings(self) -> torch.Tensor | None:
        """The (V, d) LM-head weight for a causal or seq2seq LM (tied or not); None for an
        encoder."""
        if self.spec.kind not in LM_KINDS:
            return None
        head = self.model.get_output_embeddings()
        if head is None:
            return None
        return head.weight

    def core(self) -> torch.nn.Module:
        """The transformer stack without the LM head (``model.model`` for llama,
        ``model.transformer`` for gpt2, the model itself for a bare encoder)."""
        return getattr(self.model, "base_model", self.model)


_CAST_HOOK = "_softprompt_casts_inputs"


def _cast_inputs_embeds(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
    """Forward pre-hook: float32 `inputs_embeds` (a prompt, a search's trigger tokens) into
    the dtype the frozen weights are held in, for callers that run the stack directly."""
    embeds = kwargs.get("inputs_embeds")
    if embeds is not None and embeds.is_floating_point():
        weight = module.get_input_embeddings().weight
        if embeds.dtype != weight.dtype:
            kwargs["inputs_embeds"] = embeds.to(weight.dtype)
    return args, kwargs


def cast_inputs_at_the_boundary(model: torch.nn.Module) -> None:
    """Install `_cast_inputs_embeds` on the model and its transformer stack, once. The
    injectors cast explicitly (inject/); this covers code that calls the stack itself."""
    for module in {id(m): m for m in (model, getattr(model, "base_model", model))}.values():
        if not getattr(module, _CAST_HOOK, False) and hasattr(module, "get_input_embeddings"):
            module.register_forward_pre_hook(_cast_inputs_embeds, with_kwargs=True)
            setattr(module, _CAST_HOOK, True)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Turn off gradients for every parameter and put the model in eval mode."""
    model.requires_grad_(False)
    model.eval()
    return model


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    if callable(get):
        try:
            return get()
        except Exception:  # pragma: no cover - odd configs
            return config
    return config


def _first_attr(config: Any, *names: str) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return None


def arch_fields(config: Any) -> dict[str, Any]:
    """The architecture-relevant config fields that go into the fingerprint."""
    cfg = _text_config(config)
    hidden = _first_attr(cfg, "hidden_size", "n_embd", "d_model")
    heads = _first_attr(cfg, "num_attention_heads", "n_head")
    kv = _first_attr(cfg, "num_key_value_heads", "num_kv_heads") or heads
    head_dim = _first_attr(cfg, "head_dim")
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads
    return {
        "model_type": getattr(config, "model_type", None) or type(config).__name__,
        "hidden_size": hidden,
        "num_layers": _first_attr(cfg, "num_hidden_layers", "n_layer", "num_layers"),
        "num_heads": heads,
        "num_kv_heads": kv,
        "head_dim": head_dim,
        "vocab_size": getattr(cfg, "vocab_size", None),
        "intermediate_size": _first_attr(cfg, "intermediate_size", "n_inner", "ffn_dim"),
    }


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")


def hashed_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the fingerprint hashes a tensor of `dtype` in: bf16/fp16 as float32 (an
    exact upcast), so the same weights hash alike whichever of those dtypes holds them."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def hashed(t: torch.Tensor) -> torch.Tensor:
    """The tensor as the fingerprint sees it (see `hashed_dtype`)."""
    t = t.detach()
    return t.to(hashed_dtype(t.dtype))


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """A zero-copy view of the raw bytes of a (CPU, contiguous) tensor."""
    t = t.detach()
    if t.device.type == "meta":
        raise BackboneError("cannot fingerprint a model whose weights are not loaded (meta device)")
    if t.device.type != "cpu":
        t = t.cpu()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


class Fingerprinter:
    """The fingerprint recipe, fed one tensor at a time in sorted-name order, so a GGUF
    conversion can hash each dequantized tensor and drop it (see `fingerprint`)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.model_type = fields.get("model_type")
        self._hash = hashlib.sha256()
        header = {"fingerprint_version": FINGERPRINT_VERSION, "config": fields}
        self._hash.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())

    def _meta(self, meta: dict[str, Any]) -> None:
        self._hash.update(b"\n" + json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())

    def add(self, name: str, t: torch.Tensor) -> None:
        """Hash a tensor's name, shape, dtype and bytes (bf16/fp16 as float32)."""
        t = hashed(t)
        self.begin(name, list(t.shape), dtype_name(t.dtype))
        self.update(t)

    def begin(self, name: str, shape: list[int], dtype: str) -> None:
        """Start a tensor whose bytes follow in one or more `update` calls (row chunks)."""
        self._meta({"name": name, "shape": shape, "dtype": dtype})

    def update(self, t: torch.Tensor) -> None:
        self._hash.update(_tensor_bytes(hashed(t)))

    def alias(self, name: str, of: str, t: torch.Tensor) -> None:
        """A tied tensor: only its name and which earlier name it shares storage with."""
        dtype = dtype_name(hashed_dtype(t.dtype))
        meta = {"name": name, "shape": list(t.shape), "dtype": dtype}
        self._meta(dict(meta, alias_of=of))

    def hexdigest(self) -> str:
        return f"{self.model_type}-{self._hash.hexdigest()[:16]}"


def fingerprint(model: torch.nn.Module) -> str:
    """A content hash of a model: ``<model_type>-<16 hex>``.

    sha256 over a canonical JSON of the architecture fields of ``model.config`` and then,
    in sorted-name order, each saved tensor's (parameter and persistent buffer) name,
    shape, dtype and raw bytes. A tensor reached under several names (tied weights) is
    hashed once; later names record only which name they alias. Non-persistent buffers
    (e.g. rotary ``inv_freq``) are derived from the config and left out, so the value does
    not move with the transformers version. bf16/fp16 tensors are hashed as float32 (an
    exact upcast), so a checkpoint stored in bf16 has one fingerprint whether it is held
    in bf16 or float32. Hash before quantizing: it identifies the source weights.
    Always hashes (about 0.3 s for 0.5 GB).
    """
    config = getattr(model, "config", None)
    fields = arch_fields(config) if config is not None else {"model_type": type(model).__name__}
    hasher = Fingerprinter(fields)
    seen: dict[tuple, str] = {}
    state = model.state_dict(keep_vars=False)
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        if t.device.type == "meta":  # offloaded to disk (--device-map): read it back
            hasher.add(name, _onloaded(model, name, t))
            continue
        key = (
            t.untyped_storage().data_ptr() if t.numel() else id(t),
            t.storage_offset(),
            tuple(t.shape),
            tuple(t.stride()),
            t.dtype,
        )
        alias = seen.get(key)
        if alias is not None and t.numel():
            hasher.alias(name, alias, t)
            continue
        seen[key] = name
        hasher.add(name, t)
    return hasher.hexdigest()


def _onloaded(model: torch.nn.Module, name: str, t: torch.Tensor) -> torch.Tensor:
    """A weight Accelerate offloaded (a meta tensor in the model, its value in the hook's
    weights map), read back on its own; `t` (meta, refused by the hash) if there is none."""
    module_name, _, attr = name.rpartition(".")
    hook = getattr(model.get_submodule(module_name), "_hf_hook", None)
    for h in getattr(hook, "hooks", None) or [hook]:
        weights = getattr(h, "weights_map", None)
        if weights is not None and attr in weights:
            return weights[attr]
    return t


def infer_kind_from_config(config: Any) -> str:
    """``seq2seq-lm`` for an encoder-decoder (T5, BART), ``causal-lm`` if the config names
    an LM-head architecture (or a known decoder model_type), else ``encoder``."""
    if getattr(config, "model_type", None) in ("dinov2", "vit", "deit"):
        return "vision"
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq-lm"
    archs = getattr(config, "architectures", None) or []
    if any(str(a).endswith(_CAUSAL_CLASS_SUFFIXES) for a in archs):
        return "causal-lm"
    if not archs and getattr(config, "model_type", None) in CAUSAL_MODEL_TYPES:
        return "causal-lm"
    return "encoder"


def infer_kind_from_model(model: torch.nn.Module) -> str:
    name = type(model).__name__
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return "seq2seq-lm"
    if name.endswith(_CAUSAL_CLASS_SUFFIXES):
        return "causal-lm"
    return "encoder"


def check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise BackboneError(f"unknown backbone kind {kind!r}: expected one of {', '.join(KINDS)}")


def _front_token(tokenizer: Any) -> int | None:
    """The id the tokenizer puts in front of a text, or None if it adds nothing there."""
    with_special = list(tokenizer("hi", add_special_tokens=True)["input_ids"])
    without = list(tokenizer("hi", add_special_tokens=False)["input_ids"])
    if len(with_special) > len(without) and with_special[:1] != without[:1]:
        return int(with_special[0])
    return None


def _ensure_pad(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise BackboneError(
                "the tokenizer has neither a pad token nor an eos token; give it a pad token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return int(tokenizer.pad_token_id)


def decoder_fields(config: Any) -> dict[str, int]:
    """An encoder-decoder's decoder shape (T5: num_decoder_layers, d_kv; BART:
    decoder_layers, decoder_attention_heads): prefix K/V go into its self-attention."""
    layers = _first_attr(config, "num_decoder_layers", "decoder_layers", "num_layers")
    heads = _first_attr(config, "decoder_attention_heads", "num_heads", "num_attention_heads")
    hidden = _first_attr(config, "d_model", "hidden_size")
    head_dim = _first_attr(config, "d_kv") or hidden // heads
    return {"num_layers": layers, "num_heads": heads, "num_kv_heads": heads, "head_dim": head_dim}


def make_spec(model: torch.nn.Module, tokenizer: Any, kind: str) -> BackboneSpec:
    fields = arch_fields(model.config)
    emb = model.get_input_embeddings()
    if emb is None:
        raise BackboneError(f"{type(model).__name__} has no input embeddings")
    missing = [k for k in ("hidden_size", "num_layers", "num_heads") if not fields.get(k)]
    if missing:
        raise BackboneError(
            f"cannot read {', '.join(missing)} from the {fields['model_type']} config"
        )
    pad = _ensure_pad(tokenizer)
    eos = tokenizer.eos_token_id
    if kind == "seq2seq-lm":
        fields = {**fields, **decoder_fields(model.config)}
    return BackboneSpec(
        kind=kind,
        architecture=str(fields["model_type"]),
        hidden_size=int(fields["hidden_size"]),
        num_layers=int(fields["num_layers"]),
        num_heads=int(fields["num_heads"]),
        num_kv_heads=int(fields["num_kv_heads"]),
        head_dim=int(fields["head_dim"]),
        vocab_size=int(emb.weight.shape[0]),
        bos_token_id=_front_token(tokenizer),
        pad_token_id=pad,
        eos_token_id=None if eos is None else int(eos),
    )


def make_backbone(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    name: str,
    kind: str | None = None,
    known_fingerprint: str | None = None,
    quantize: str | None = None,
) -> Backbone:
    check_kind(kind)
    if kind is None:
        kind = infer_kind_from_model(model)
    freeze(model)
    if kind != "vision":
        cast_inputs_at_the_boundary(model)
    spec = make_spec(model, tokenizer, kind)
    fp = known_fingerprint if known_fingerprint is not None else fingerprint(model)
    return Backbone(
        name=name, model=model, tokenizer=tokenizer, spec=spec, fingerprint=fp, quantize=quantize
    )


def from_pretrained_model(
    model: torch.nn.Module, tokenizer: Any, *, name: str, kind: str | None = None
) -> Backbone:
    """Wrap an in-memory HF model and tokenizer: freeze the model, read its spec
    (setting ``tokenizer.pad_token`` to eos when it has none) and fingerprint it.

    ``kind`` is inferred from the model class (``*ForCausalLM`` / ``*LMHeadModel`` ->
    causal-lm, else encoder) unless given.
    """
    return make_backbone(model, tokenizer, name=name, kind=kind)
