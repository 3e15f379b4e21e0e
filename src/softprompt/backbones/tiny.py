"""Tiny random backbones for tests and benchmarks, built entirely in code (no downloads).

Each builder returns a frozen `Backbone` with hidden size 32, 2 layers and a ~100-token
word-level vocabulary, and is deterministic for a given ``seed`` (the global torch RNG is
left untouched). The tokenizers lowercase, split on whitespace and punctuation, and map
unknown words to the unk token.

- `tiny_llama`: llama, 4 heads / 2 KV heads, tied embeddings; tokenizer adds ``<s>`` in front.
- `tiny_gpt2`: gpt2; tokenizer adds nothing and has no pad token (pad becomes eos).
- `tiny_bert`: bert encoder (``BertModel``); tokenizer wraps texts as ``[CLS] ... [SEP]``.
- `tiny_seq2seq("t5" | "bart")`: encoder-decoders (2 + 2 layers); T5's tokenizer appends
  ``</s>`` and its decoder starts from pad, BART's wraps ``<s> ... </s>`` and its decoder
  starts from ``</s>``. No T5/BART weights ship in any package, so these stand in for them.
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
    [SEP] [MASK], adds [CLS] ... [SEP]), ``"t5"`` (<pad> </s> <unk>, adds </s> at the
    end), ``"bart"`` (<s> <pad> </s> <unk>, adds <s> ... </s>).
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
    if style in _SEQ2SEQ_STYLES:
        specials, template = _SEQ2SEQ_STYLES[style]
        vocab = _vocab(specials)
        tk = _word_level(vocab, "<unk>", template)
        return PreTrainedTokenizerFast(
            tokenizer_object=tk,
            bos_token="<s>" if "<s>" in vocab else None,
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            model_max_length=MAX_POSITIONS,
            model_input_names=["input_ids", "attention_mask"],
        )
    raise ValueError(
        f"unknown tiny tokenizer style {style!r}: expected llama, gpt2, bert, t5 or bart"
    )


# Encoder-decoder tokenizers: specials (in id order) and the template they add.
_SEQ2SEQ_STYLES: dict[str, tuple[list[str], tuple[str, str]]] = {
    "t5": (["<pad>", "</s>", "<unk>"], ("$A </s>", "$A </s> $B </s>")),
    "bart": (["<s>", "<pad>", "</s>", "<unk>"], ("<s> $A </s>", "<s> $A </s> </s> $B </s>")),
}


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


# Encoder-decoder families: the config class and its options. T5 has relative position
# buckets, no BOS, a decoder that starts from pad and a tied head scaled by d**-0.5;
# BART has learned positions, <s> in front, a decoder that starts from </s> and a
# `final_logits_bias` added to the head (filled at random here so a path that forgets
# it shows).
SEQ2SEQ_FAMILIES: dict[str, tuple[str, dict]] = {
    "t5": (
        "T5Config",
        {
            "d_model": HIDDEN,
            "d_kv": HIDDEN // HEADS,
            "d_ff": 64,
            "num_layers": LAYERS,
            "num_decoder_layers": LAYERS,
            "num_heads": HEADS,
            "relative_attention_num_buckets": 8,
            "relative_attention_max_distance": 32,
        },
    ),
    "bart": (
        "BartConfig",
        {
            "d_model": HIDDEN,
            "encoder_layers": LAYERS,
            "decoder_layers": LAYERS,
            "encoder_attention_heads": HEADS,
            "decoder_attention_heads": HEADS,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "max_position_embeddings": MAX_POSITIONS,
            "forced_bos_token_id": None,
            "init_std": 0.3,  # BART's 0.02 leaves a tiny model nearly blind to its input
        },
    ),
}


def tiny_seq2seq(family: str, seed: int = 0) -> Backbone:
    """A random encoder-decoder of `family` (a key of `SEQ2SEQ_FAMILIES`): 2 encoder and
    2 decoder layers, hidden 32, 4 heads, built as ``*ForConditionalGeneration``."""
    import transformers
    from transformers import AutoModelForSeq2SeqLM

    config_name, options = SEQ2SEQ_FAMILIES[family]
    tok = tiny_tokenizer(family)
    start = tok.pad_token_id if family == "t5" else tok.eos_token_id
    config = getattr(transformers, config_name)(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        decoder_start_token_id=start,
        **options,
    )

    def build() -> torch.nn.Module:
        model = AutoModelForSeq2SeqLM.from_config(config, attn_implementation="sdpa")
        bias = getattr(model, "final_logits_bias", None)
        if bias is not None:
            bias.normal_(0.0, 0.5)
        return model

    model = _build(build, seed)
    return from_pretrained_model(model, tok, name=f"tiny-{family}", kind="seq2seq-lm")
