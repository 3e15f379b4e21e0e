"""PEFT interop: our prompts as PEFT adapters and PEFT adapters as our prompts, each giving
the logits of the other side, checked with the installed PEFT on tiny random decoders.

Llama's and Gemma 3's tokenizers add BOS (PEFT's virtual tokens go before it, ours after
it), GPT-2's and Qwen2's do not; every type is covered both ways on each, and soft
prompts / prompt tuning on the other tiny families.
"""

from __future__ import annotations

import json

import peft  # a dev dependency: the interop checks are not optional
import pytest
import torch

from softprompt.backbones.tiny import FAMILIES as ALL_FAMILIES
from softprompt.backbones.tiny import tiny_causal
from softprompt.interop.peft import PeftAdapterError, export_peft
from softprompt.interop.peft_import import import_peft
from softprompt.model import PromptModel
from softprompt.promptfile import read_prompt_file

FAMILIES = ["llama", "gpt2", "gemma3", "qwen2"]  # BOS; none; BOS + scaled embeddings; GQA, untied
ATOL = 1e-5
N = 3


def _ids(backbone, rows: int = 3, length: int = 7) -> torch.Tensor:
    """Random ordinary token ids (no BOS/pad/eos): (rows, length)."""
    generator = torch.Generator().manual_seed(1)
    return torch.randint(8, backbone.spec.vocab_size, (rows, length), generator=generator)


@torch.no_grad()
def _our_logits(model: PromptModel, ids: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits at every real token: (B, T, V)."""
    hidden = model.injector.hidden_states(model.prompt(), ids, torch.ones_like(ids))
    return model.injector.logits(hidden)


@torch.no_grad()
def _peft_logits(theirs, ids: torch.Tensor, *, bos: int | None, front: int, **kwargs):
    """PEFT's logits at the same tokens: BOS prepended when given, and the `front`
    virtual-token positions PEFT returns (prompt and P-tuning types) dropped."""
    if bos is not None:
        ids = torch.cat([torch.full((len(ids), 1), bos), ids], dim=1)
    logits = theirs(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs).logits
    return logits[:, front + (bos is not None) :]  # (B, T, V)


def _perturbed(model: PromptModel) -> PromptModel:
    """Every tensor moved off its init (as after training), so no factor is trivially one."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return model


OURS = {
    "soft-prompt": {"n_tokens": N},
    "p-tuning": {"n_tokens": N, "hidden": 16},
    "p-tuning-lstm": {"n_tokens": N, "hidden": 16, "encoder": "lstm"},
    "prefix-tuning": {"n_tokens": N, "hidden": 16},
    "multitask-prompt": {"n_tokens": N, "rank": 2},
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", list(OURS))
def test_exported_adapter_gives_our_logits_in_peft(make_model, tmp_path, family, case):
    backbone = tiny_causal(family)
    method = case.removesuffix("-lstm")
    ours = _perturbed(make_model(backbone, method, **OURS[case]))
    export_peft(ours, tmp_path / "adapter")
    base = tiny_causal(family).model  # a fresh copy: PEFT wraps it
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert (
        theirs.active_peft_config.peft_type.value
        == json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"]
    )
    ids = _ids(backbone)
    prefix = method == "prefix-tuning"
    folded = not prefix and backbone.spec.bos_token_id is not None
    front = 0 if prefix else theirs.active_peft_config.num_virtual_tokens
    assert front == (0 if prefix else N + folded)
    extra = {"task_ids": torch.zeros(len(ids), dtype=torch.long)} if "multitask" in case else {}
    # the sidecar's rule: BOS in the ids for a prefix, folded into the adapter otherwise
    bos = backbone.spec.bos_token_id if prefix else None
    expected = _peft_logits(theirs, ids, bos=bos, front=front, **extra)
    torch.testing.assert_close(_our_logits(ours, ids), expected, atol=ATOL, rtol=ATOL)


def _peft_adapter(family: str, peft_type: str, folder):
    """A PEFT-made adapter with random (non-trivial) weights, saved; returns the model."""
    common = {"task_type": peft.TaskType.CAUSAL_LM, "num_virtual_tokens": N}
    config = {
        "PROMPT_TUNING": lambda: peft.PromptTuningConfig(**common),
        "P_TUNING": lambda: peft.PromptEncoderConfig(**common, encoder_hidden_size=16),
        "PREFIX_TUNING": lambda: peft.PrefixTuningConfig(
            **common, prefix_projection=True, encoder_hidden_size=16
        ),
        "PREFIX_TUNING_DIRECT": lambda: peft.PrefixTuningConfig(**common),
        "MULTITASK_PROMPT_TUNING": lambda: peft.MultitaskPromptTuningConfig(
            **common, num_tasks=2, num_ranks=2
        ),
    }[peft_type]()
    torch.manual_seed(3)
    theirs = peft.get_peft_model(tiny_causal(family).model, config)
    encoder = theirs.prompt_encoder.default
    with torch.no_grad():
        for param in encoder.parameters():  # PEFT's MPT factors start near zero
            param.copy_(torch.randn(param.shape) * 0.5)
    theirs.eval()
    theirs.save_pretrained(folder)
    return theirs


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "peft_type",
    [
        "PROMPT_TUNING",
        "P_TUNING",
        "PREFIX_TUNING",
        "PREFIX_TUNING_DIRECT",
        "MULTITASK_PROMPT_TUNING",
    ],
)
def test_imported_adapter_gives_peft_logits(tmp_path, family, peft_type):
    theirs = _peft_adapter(family, peft_type, tmp_path / "adapter")
    backbone = tiny_causal(family)
    task_id = 1 if "MULTITASK" in peft_type else None
    out = import_peft(tmp_path / "adapter", backbone, tmp_path / "p.safetensors", task_id=task_id)
    ours = PromptModel.load(out, backbone)
    ids = _ids(backbone)
    prefix = peft_type.startswith("PREFIX")
    extra = {"task_ids": torch.full((len(ids),), 1)} if task_id else {}
    expected = _peft_logits(  # PEFT's own convention: ids as the tokenizer makes them
        theirs, ids, bos=backbone.spec.bos_token_id, front=0 if prefix else N, **extra
    )
    torch.testing.assert_close(_our_logits(ours, ids), expected, atol=ATOL, rtol=ATOL)
    method = read_prompt_file(out)[1]["method"]["name"]
    if prefix or backbone.spec.bos_token_id is not None:  # PEFT's [v, BOS, text] as K/V
        assert method == "prefix-tuning"
    else:
        assert method == ("multitask-prompt" if task_id else "soft-prompt")


@pytest.mark.parametrize("family", [f for f in ALL_FAMILIES if f not in FAMILIES])
def test_other_families_match_peft_both_ways(make_model, tmp_path, family):
    """Gemma 2's soft-capping, Phi's head bias, Mistral's window, Cohere's logit scale..."""
    backbone = tiny_causal(family)
    ours = _perturbed(make_model(backbone, n_tokens=N))
    export_peft(ours, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_causal(family).model, tmp_path / "ours")
    ids = _ids(backbone)
    front = theirs.active_peft_config.num_virtual_tokens
    expected = _peft_logits(theirs, ids, bos=None, front=front)
    torch.testing.assert_close(_our_logits(ours, ids), expected, atol=ATOL, rtol=ATOL)

    theirs = _peft_adapter(family, "PROMPT_TUNING", tmp_path / "theirs")
    out = import_peft(tmp_path / "theirs", backbone, tmp_path / "p.safetensors")
    expected = _peft_logits(theirs, ids, bos=backbone.spec.bos_token_id, front=N)
    imported = PromptModel.load(out, backbone)
    torch.testing.assert_close(_our_logits(imported, ids), expected, atol=ATOL, rtol=ATOL)


ROUND_TRIP = {
    "soft-prompt": {},
    "multitask-prompt": {"rank": 2},
    "prefix-tuning": {"reparameterize": False},
}


@pytest.mark.parametrize("method", list(ROUND_TRIP))
def test_round_trip_through_peft_gives_back_the_prompt(make_model, llama, tmp_path, method):
    """Export then import on a BOS backbone: the folded BOS comes off, same method and tensors."""
    ours = _perturbed(make_model(llama, method, n_tokens=N, **ROUND_TRIP[method]))
    export_peft(ours, tmp_path / "adapter")
    back = PromptModel.load(
        import_peft(tmp_path / "adapter", llama, tmp_path / "p.safetensors"), llama
    )
    assert back.method_name == method
    assert back.task.config == ours.task.config  # the framing travels in softprompt.json
    for (name, mine), (_, again) in zip(
        ours.state_dict().items(), back.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(again, mine, atol=1e-6, rtol=0, msg=name)


# -- bad inputs: one line naming the file and what to do ----------------------------------


def _refused(call, *needles: str) -> str:
    with pytest.raises(PeftAdapterError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.fixture()
def exported(make_model, gpt2, tmp_path):
    """A soft prompt for tiny gpt2 exported as a PEFT adapter folder."""
    export_peft(_perturbed(make_model(gpt2, n_tokens=N)), tmp_path / "adapter")
    return tmp_path / "adapter"


def test_an_adapter_for_another_hidden_size_is_refused(tmp_path, gpt2):
    from transformers import GPT2Config, GPT2LMHeadModel

    wide = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=48, n_layer=2, n_head=4))
    config = peft.PromptTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=N)
    peft.get_peft_model(wide, config).save_pretrained(tmp_path / "wide")
    _refused(
        lambda: import_peft(tmp_path / "wide", gpt2, tmp_path / "p.safetensors"),
        "adapter_config.json",
        "token_dim 48",
        "32",
        "--backbone",
    )


def test_an_adapter_for_another_base_model_is_refused(exported, gpt2, tmp_path):
    path = exported / "adapter_config.json"
    (exported / "softprompt.json").unlink()  # as PEFT made it: only the base name says
    config = json.loads(path.read_text())
    path.write_text(json.dumps(dict(config, base_model_name_or_path="openai-community/gpt2-xl")))
    out = tmp_path / "p.safetensors"
    _refused(lambda: import_peft(exported, gpt2, out), "gpt2-xl", "--backbone", "--trust-base")
    import_peft(exported, gpt2, out, trust_base=True)  # the user vouches for the weights
    assert out.is_file()


def test_an_exported_adapter_remembers_its_exact_backbone(exported, tmp_path):
    other = tiny_causal("gpt2", seed=1)  # same shapes, other weights
    _refused(
        lambda: import_peft(exported, other, tmp_path / "p.safetensors"),
        "softprompt.json",
        "fingerprint",
        "--backbone",
    )


def test_other_peft_types_are_refused(tmp_path, gpt2):
    config = peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=2, target_modules=["c_attn"])
    peft.get_peft_model(tiny_causal("gpt2").model, config).save_pretrained(tmp_path / "lora")
    _refused(
        lambda: import_peft(tmp_path / "lora", gpt2, tmp_path / "p.safetensors"),
        "adapter_config.json",
        "'LORA'",
        "PROMPT_TUNING",
    )


def test_a_pickled_adapter_is_never_loaded(exported, gpt2, tmp_path, monkeypatch):
    (exported / "adapter_model.safetensors").rename(exported / "adapter_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called on an adapter")

    monkeypatch.setattr(torch, "load", no_unpickling)
    _refused(
        lambda: import_peft(exported, gpt2, tmp_path / "p.safetensors"),
        "adapter_model.bin",
        "never loaded",
        "save_pretrained",
    )


@pytest.mark.parametrize(
    "damage,needles",
    [
        ("no-folder", ["no such adapter folder"]),
        ("no-config", ["adapter_config.json: missing"]),
        ("bad-json", ["adapter_config.json: not readable JSON"]),
        ("no-weights", ["adapter_model.safetensors: missing"]),
        ("truncated", ["adapter_model.safetensors: not a readable safetensors file"]),
        ("wrong-key", ["no tensor 'prompt_embeddings'"]),
        ("nan", ["NaN/inf"]),
    ],
)
def test_missing_or_corrupt_files_are_named(exported, gpt2, tmp_path, damage, needles):
    from safetensors.torch import load_file, save_file

    weights, folder = exported / "adapter_model.safetensors", exported
    if damage == "no-folder":
        folder = tmp_path / "nowhere"
    elif damage == "no-config":
        (exported / "adapter_config.json").unlink()
    elif damage == "bad-json":
        (exported / "adapter_config.json").write_text('{"peft_type": "PROMPT_TUNING",')
    elif damage == "no-weights":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-40])
    elif damage == "wrong-key":
        save_file({"embedding.weight": load_file(weights)["prompt_embeddings"]}, weights)
    elif damage == "nan":
        save_file({"prompt_embeddings": torch.full((N, 32), float("nan"))}, weights)
    _refused(lambda: import_peft(folder, gpt2, tmp_path / "p.safetensors"), *needles)


def test_a_multitask_adapter_needs_a_task_id(tmp_path, gpt2):
    _peft_adapter("gpt2", "MULTITASK_PROMPT_TUNING", tmp_path / "mpt")
    out = tmp_path / "p.safetensors"
    _refused(lambda: import_peft(tmp_path / "mpt", gpt2, out), "2 tasks", "--task-id")
    _refused(lambda: import_peft(tmp_path / "mpt", gpt2, out, task_id=2), "--task-id 2")


def test_prompts_peft_cannot_hold_are_refused(make_model, llama, bert, tmp_path):
    slots = make_model(llama, "p-tuning", n_tokens=N, task={"template": "{p:3} x {text} y"})
    _refused(lambda: export_peft(slots, tmp_path / "a"), "{p} slots", "front only")
    _refused(lambda: export_peft(make_model(bert), tmp_path / "b"), "encoder", "CAUSAL_LM")
    head = make_model(llama, task={"head": "linear"})
    _refused(lambda: export_peft(head, tmp_path / "c"), "task head", "verbalizer")
    none = make_model(llama, "none")
    _refused(lambda: export_peft(none, tmp_path / "d"), "'none'", "soft-prompt")


def test_peft_lstm_encoder_of_width_h_is_ours_of_width_2h(make_model, gpt2):
    """Why an LSTM P-tuning export names encoder_hidden_size = hidden / 2 (the weights
    themselves have no place in PEFT's adapter file)."""
    ours = _perturbed(make_model(gpt2, "p-tuning", n_tokens=N, hidden=16, encoder="lstm"))
    config = peft.PromptEncoderConfig(
        task_type=peft.TaskType.CAUSAL_LM,
        num_virtual_tokens=N,
        token_dim=gpt2.spec.hidden_size,
        encoder_reparameterization_type="LSTM",
        encoder_hidden_size=8,
        num_transformer_submodules=1,
    )
    theirs = peft.tuners.p_tuning.PromptEncoder(config)
    renamed = {  # lstm.* -> lstm_head.*, head.* -> mlp_head.*
        ("lstm_head." + k[5:] if k.startswith("lstm.") else "mlp_" + k): v
        for k, v in ours.method.encoder.state_dict().items()
    }
    theirs.load_state_dict(renamed | {"embedding.weight": ours.method.embeddings.detach()})
    with torch.no_grad():
        expected = theirs(torch.arange(N)[None])[0]  # (n, d)
    torch.testing.assert_close(ours.prompt().embeds.detach(), expected, atol=1e-6, rtol=1e-5)


def test_a_builtin_export_names_the_folder_its_weights_came_from(
    make_model, llama_folder, tmp_path
):
    """A built-in (here a tiny folder under the name smollm2-135m, whose real weights are
    dequantized from a Q4_1 GGUF) is exported with the folder its weights were read from
    as `base_model_name_or_path`, not the hub id: PeftModel loads that base offline and
    gives our logits; importing the export back still works."""
    import dataclasses

    from transformers import AutoModelForCausalLM

    from softprompt.backbones import load_backbone

    backbone = dataclasses.replace(load_backbone(str(llama_folder)), name="smollm2-135m")
    ours = _perturbed(make_model(backbone, "soft-prompt", n_tokens=N))
    export_peft(ours, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(llama_folder.resolve())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter")
    ids = _ids(backbone)
    front = theirs.active_peft_config.num_virtual_tokens
    expected = _peft_logits(theirs, ids, bos=None, front=front)
    torch.testing.assert_close(_our_logits(ours, ids), expected, atol=ATOL, rtol=ATOL)
    import_peft(tmp_path / "adapter", backbone, tmp_path / "back.safetensors")
