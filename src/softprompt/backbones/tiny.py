"""Tiny random backbones for tests and benchmarks, built entirely in code (no downloads).

Each builder returns a frozen `Backbone` with hidden size 32, 2 layers and a ~100-token
word-level vocabulary, and is deterministic for a given ``seed`` (the global torch RNG is
left untouched). The tokenizers lowercase, split on whitespace and punctuation, and map
unknown words to the unk token.

- `tiny_llama`: llama, 4 heads / 2 KV heads, tied embeddings; tokenizer adds ``<s>`` in front.
- `tiny_gpt2`: gpt2; tokenizer adds nothing and has no pad token (pad becomes eos).
- `tiny_bert`: bert encoder (``BertModel``); tokenizer wraps texts as ``[CLS] ... [SEP]``.
"""

from __future__ import annotations

import torch

from softprompt.backbones._core import Backbone, from_pretrained_model

HIDDEN = 32
LAYERS = 2
HEADS = 4
MAX_POSITIONS = 512

# Common words for sentiment / topic style toy tasks. Lowercase; punctuation separate.
TINY_WORDS: tuple[str, ...] = tuple(
    " ".join(
        [
            # punctuation
            ": . , ! ? '",
            # function words
            "the a an this that it i you we they he she is was are be not no yes and or but",
            "so very really too of to in on at with for about my all one some ever never",
            "again just",
            # sentiment
            "movie film review sentiment positive negative good bad great terrible fun boring",
            "awful excellent amazing worst best love loved hate hated like enjoyed funny sad",
            "dull nice poor waste time plot acting story actors watch",
            # topics / labels
            "label answer text topic question sports politics science news team game won",
            "lost vote computer space true false",
        ]
    ).split()
)


def _vocab(specials: list[str]) -> dict[str, int]:
    tokens = list(specials) + [w for w in TINY_WORDS if w not in specials]
    return {t: i for i, t in enumerate(tokens)}


def _word_level(vocab: dict[str, int], unk: str, template: tuple[str, ...] | None) -> object:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if template is not None:
        single, pair = template
        specials = sorted({t for t in (single + " " + pair).split() if t in vocab})
        tk.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, vocab[t]) for t in specials]
        )
    return tk


def tiny_tokenizer(style: str = "llama"):
    """A word-level fast tokenizer over `TINY_WORDS`.

    ``style``: ``"llama"`` (<unk> <s> </s> <pad>, adds <s> in front), ``"gpt2"``
    (<|endoftext|> <unk>, adds nothing, no pad token), ``"bert"`` ([PAD] [UNK] [CLS]
    [SEP] [MASK], adds [CLS] ... [SEP]).
    """
    from transformers import PreTrainedTokenizerFast

    if style == "llama":
        vocab = _vocab(["<unk>", "<s>", "</s>", "<pad>"])
        tk = _word_level(vocab, "<unk>", ("<s> $A", "<s> $A <s> $B"))
        return PreTrainedTokenizerFast(
            tokenizer_object=tk,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            model_max_length=MAX_POSITIONS,
            model_input_names=["input_ids", "attention_mask"],
        )
    if style == "gpt2":
        vocab = _vocab(["<|endoftext|>", "<unk>"])
        tk = _word_level(vocab, "<unk>", None)
        return PreTrainedTokenizerFast(
            tokenizer_object=tk,
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<unk>",
            model_max_length=MAX_POSITIONS,
            model_input_names=["input_ids", "attention_mask"],
        )
    if style == "bert":
        vocab = _vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        tk = _word_level(vocab, "[UNK]", ("[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1"))
        return PreTrainedTokenizerFast(
            tokenizer_object=tk,
            cls_token="[CLS]",
            sep_token="[SEP]",
            pad_token="[PAD]",
            unk_token="[UNK]",
            mask_token="[MASK]",
            model_max_length=MAX_POSITIONS,
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )
    raise ValueError(f"unknown tiny tokenizer style {style!r}: expected llama, gpt2 or bert")


def _build(model_cls_factory, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls_factory()
    return model.to(torch.float32)


def tiny_llama(seed: int = 0) -> Backbone:
    """A random 2-layer llama causal LM (hidden 32, GQA 4/2 heads, tied embeddings)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = tiny_tokenizer("llama")
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = _build(
        lambda: AutoModelForCausalLM.from_config(config, attn_implementation="sdpa"), seed
    )
    return from_pretrained_model(model, tok, name="tiny-llama", kind="causal-lm")


def tiny_gpt2(seed: int = 0) -> Backbone:
    """A random 2-layer gpt2 causal LM (hidden 32, 4 heads); its tokenizer has no pad."""
    from transformers import AutoModelForCausalLM, GPT2Config

    tok = tiny_tokenizer("gpt2")
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        n_positions=MAX_POSITIONS,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = _build(
        lambda: AutoModelForCausalLM.from_config(config, attn_implementation="sdpa"), seed
    )
    return from_pretrained_model(model, tok, name="tiny-gpt2", kind="causal-lm")


def tiny_bert(seed: int = 0) -> Backbone:
    """A random 2-layer bert encoder (hidden 32, 4 heads), no MLM head."""
    from transformers import AutoModel, BertConfig

    tok = tiny_tokenizer("bert")
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tok.pad_token_id,
    )
    model = _build(lambda: AutoModel.from_config(config, attn_implementation="sdpa"), seed)
    return from_pretrained_model(model, tok, name="tiny-bert", kind="encoder")


# Causal LM families users pick, each with what sets it apart at the two ends of the model:
# embedding scaling (gemma), logit soft-capping (gemma2/3), a head bias (phi), a logit scale
# (cohere), no BOS (qwen, gpt2), untied heads, sliding-window layers (mistral, gemma).
FAMILIES: dict[str, tuple[str, str, dict]] = {
    "llama": ("LlamaConfig", "llama", {"num_key_value_heads": 2, "tie_word_embeddings": True}),
    "qwen2": ("Qwen2Config", "gpt2", {"num_key_value_heads": 2, "tie_word_embeddings": False}),
    "qwen3": ("Qwen3Config", "gpt2", {"num_key_value_heads": 2, "head_dim": 8}),
    "gemma2": (
        "Gemma2Config",
        "llama",
        {
            "num_key_value_heads": 2,
            "head_dim": 8,
            "query_pre_attn_scalar": 8,
            "final_logit_softcapping": 3.0,
            "attn_logit_softcapping": 50.0,
            "sliding_window": MAX_POSITIONS,
            "_attention": "eager",  # gemma2 has no SDPA path (its attention is soft-capped)
        },
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "llama",
        {
            "num_key_value_heads": 2,
            "head_dim": 8,
            "query_pre_attn_scalar": 8,
            "final_logit_softcapping": 3.0,
            "sliding_window": MAX_POSITIONS,
        },
    ),
    "phi3": ("Phi3Config", "llama", {"num_key_value_heads": 2, "tie_word_embeddings": False}),
    "phi": ("PhiConfig", "gpt2", {"num_key_value_heads": 4}),
    "mistral": ("MistralConfig", "llama", {"num_key_value_heads": 2, "sliding_window": 64}),
    "cohere": ("CohereConfig", "llama", {"num_key_value_heads": 2, "logit_scale": 0.25}),
    "gpt2": ("GPT2Config", "gpt2", {}),
}


def tiny_causal(family: str, seed: int = 0) -> Backbone:
    """A random 2-layer causal LM of `family` (a key of `FAMILIES`), hidden 32, 4 heads."""
    import transformers
    from transformers import AutoModelForCausalLM

    if family == "gpt2":
        return tiny_gpt2(seed)
    config_name, style, options = FAMILIES[family]
    attention = options.get("_attention", "sdpa")
    extra = {k: v for k, v in options.items() if not k.startswith("_")}
    tok = tiny_tokenizer(style)
    config = getattr(transformers, config_name)(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        **extra,
    )
    model = _build(
        lambda: AutoModelForCausalLM.from_config(config, attn_implementation=attention), seed
    )
    return from_pretrained_model(model, tok, name=f"tiny-{family}", kind="causal-lm")
