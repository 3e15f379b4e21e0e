"""`--device-map` (issue 19): a backbone spread by Accelerate scores and trains as the
plain load does, and offloaded weights (disk here: this machine has no GPU) stay unchanged.

Tolerance, stated once: losses and probabilities within 1e-5 of the plain model (the same
float32 arithmetic; only where each block's weights are read from differs).
"""

from __future__ import annotations

import pytest
import torch

from softprompt.backbones import fingerprint, load_backbone, place
from softprompt.backbones._placement import is_dispatched
from softprompt.errors import BackboneError, ConfigError
from softprompt.inject.checkpointing import layer_checkpointing
from softprompt.model import PromptModel

TOLERANCE = 1e-5
TEXTS = ["the movie was good", "terrible and boring plot", "i loved it", "a waste of time"]
# tiny llama: embeddings and head on the CPU, layer 0 offloaded to disk, layer 1 on the CPU
OFFLOADED = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "disk",
    "model.layers.1": "cpu",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


def _probabilities(model: PromptModel) -> torch.Tensor:
    return torch.tensor(
        [[p["scores"][k] for k in sorted(p["scores"])] for p in model.predict(TEXTS)]
    )


def _same_prompt(make_model, reference: PromptModel, backbone) -> PromptModel:
    model = make_model(backbone)
    model.load_tensors(reference.state_dict(), source="test")
    return model


def _losses(model: PromptModel, rows, steps: int = 3, checkpointing: bool = False) -> list[float]:
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        with layer_checkpointing(model.backbone, checkpointing):
            out = model(model.collate(rows))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    return losses


@pytest.mark.parametrize("device_map", [{"": "cpu"}, "auto"])
def test_whole_model_maps_score_as_the_plain_load(llama_folder, make_model, device_map):
    plain = load_backbone(str(llama_folder))
    mapped = load_backbone(str(llama_folder), device_map=device_map)
    assert is_dispatched(mapped.model) and not is_dispatched(plain.model)
    assert mapped.fingerprint == plain.fingerprint
    reference = make_model(plain)
    model = _same_prompt(make_model, reference, mapped)
    assert torch.equal(_probabilities(model), _probabilities(reference))


def test_disk_offload_trains_the_same_prompt_and_leaves_weights_unchanged(
    llama_folder, make_model, toy_dataset
):
    plain = load_backbone(str(llama_folder))
    mapped = load_backbone(str(llama_folder), device_map=OFFLOADED)
    layer0 = mapped.model.model.layers[0].self_attn.q_proj.weight
    assert layer0.device.type == "meta"  # really offloaded: read from disk at each call
    assert mapped.fingerprint == plain.fingerprint
    assert mapped.input_device == torch.device("cpu")
    place(mapped.model, "cpu")  # what the trainer does: a no-op, not accelerate's refusal
    before = {k: v.clone() for k, v in plain.model.state_dict().items()}
    rows = toy_dataset.train[:4]
    reference = make_model(plain)
    model = _same_prompt(make_model, reference, mapped)
    want = _losses(reference, rows)
    got = _losses(model, rows, checkpointing=True)
    assert got == pytest.approx(want, abs=TOLERANCE)
    assert float((_probabilities(model) - _probabilities(reference)).abs().max()) <= TOLERANCE
    # the weights as read back from the offload folder hash as the plain model's
    assert fingerprint(mapped.model) == fingerprint(plain.model) == plain.fingerprint
    assert all(torch.equal(v, before[k]) for k, v in plain.model.state_dict().items())
    assert all(not p.requires_grad for p in mapped.model.parameters())


def test_auto_with_a_small_max_memory_offloads_layers_but_keeps_the_ends(llama_folder):
    backbone = load_backbone(str(llama_folder), device_map="auto", max_memory={"cpu": 20_000})
    plan = backbone.model.hf_device_map
    assert "disk" in plan.values()
    assert plan.get("model.embed_tokens") == "cpu" and plan.get("lm_head") == "cpu"


def test_head_offloaded_to_disk_is_refused_with_the_fix(llama_folder):
    with pytest.raises(BackboneError, match="LM head.*map 'lm_head' to 'cpu'"):
        load_backbone(str(llama_folder), device_map={**OFFLOADED, "lm_head": "disk"})


def test_device_map_with_quantize_is_refused(llama_folder):
    with pytest.raises(BackboneError, match="--device-map cannot be combined with --quantize"):
        load_backbone(str(llama_folder), device_map="auto", quantize="int8")


def test_device_map_flag_and_yaml_reach_the_run_config():
    from softprompt.cli import _config_from_args, build_parser
    from softprompt.config import build_run_config

    args = build_parser().parse_args(["train", "--device-map", "auto"])
    assert _config_from_args(args).backbone_device_map == "auto"
    config = build_run_config({"backbone": {"name": "smollm2-135m", "device_map": "auto"}})
    assert config.backbone_device_map == "auto"
    assert build_run_config({}).backbone_device_map == "none"
    with pytest.raises(ConfigError, match="backbone.device_map: must be one of none, auto"):
        build_run_config({"backbone": {"device_map": "balanced"}})


def test_input_device_of_a_vision_backbone_without_an_embedding_weight():
    from softprompt.backbones.tiny_vision import tiny_vit

    assert tiny_vit().input_device == torch.device("cpu")
