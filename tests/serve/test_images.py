"""Image tasks in the server: VPT prompts on a tiny random ViT stored, served through
/classify with base64 PNG/JPEG, answers equal to the prompt file's own predictions, and
a 4xx with a message for every bad image."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from softprompt.backbones.tiny_vision import tiny_vit
from softprompt.model import PromptModel
from softprompt.serve.app import create_app
from softprompt.serve.engine import Engine
from softprompt.serve.store import PromptStore
from softprompt.tasks import TaskConfig

LABELS = ["left", "right"]


@pytest.fixture(scope="module")
def vit():
    return tiny_vit()


@pytest.fixture(scope="module")
def vision_models(vit, tmp_path_factory):
    """task -> (path, model): a shallow and a deep visual prompt, kicked off their init."""
    folder = tmp_path_factory.mktemp("vision")
    out = {}
    for seed, method in enumerate(["vpt-shallow", "vpt-deep"]):
        config = TaskConfig(labels=LABELS, image_size=16)
        model = PromptModel(vit, config, method=method, method_options={"n_tokens": 2})
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
        out[method] = (model.save(folder / f"{method}.safetensors"), model.eval())
    return out


@pytest.fixture
def vision_client(vit, vision_models, tmp_path):
    store = PromptStore(tmp_path / "store")
    for task, (path, _) in vision_models.items():
        store.add(task, path)
    engine = Engine(vit, store)
    engine.load_all()
    app = create_app(engine, max_image_bytes=6000, max_image_pixels=256 * 256)
    with TestClient(app) as c:
        yield c


def _png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype("uint8")).save(buffer, format=fmt)
    return buffer.getvalue()


def _picture(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_image_classify_equals_the_prompt_files_own_prediction(
    vision_client, vision_models, tmp_path
):
    inputs, want = [], []
    for i, (task, (_, model)) in enumerate(list(vision_models.items()) * 2):
        data = _png(_picture(i), "PNG" if i % 2 else "JPEG")
        path = tmp_path / f"{i}.img"
        path.write_bytes(data)
        want.append(model.predict([str(path)])[0])
        image = _b64(data) if i < 2 else "data:image/png;base64," + _b64(data)
        inputs.append({"task": task, "image": image})
    response = vision_client.post("/classify", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    for item, got, expected in zip(inputs, response.json()["results"], want, strict=True):
        assert got["task"] == item["task"] and got["label"] == expected["label"]
        assert got["scores"] == pytest.approx(expected["scores"], abs=1e-5)
    tasks = vision_client.get("/tasks").json()["tasks"]
    assert {t["input"] for t in tasks} == {"image"}


def _bad_images():
    noise = _png(_picture(0, size=64))  # ~12 KB of noise: over the 6,000-byte limit
    huge = _png(np.zeros((300, 300, 3)))  # small file, 90,000 pixels > 256 x 256
    return [
        ("not base64 !!", 400, "not valid base64"),
        (_b64(b"just some text, no picture"), 400, "not a PNG or JPEG"),
        (_b64(_png(_picture(1), "GIF")), 400, "GIF is not accepted"),
        (_b64(_png(_picture(1))[:60]), 400, "damaged"),
        (_b64(noise), 413, "over the server's 6,000-byte limit"),
        (_b64(huge), 413, "300x300 pixels"),
        ("", 400, "base64-encoded PNG or JPEG"),
    ]


@pytest.mark.parametrize("image, status, fragment", _bad_images())
def test_bad_images_get_a_4xx_with_a_message(vision_client, image, status, fragment):
    response = vision_client.post(
        "/classify", json={"inputs": [{"task": "vpt-deep", "image": image}]}
    )
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "item, fragment",
    [
        ({"task": "vpt-deep", "text": "a picture"}, "is an image task"),
        ({"task": "vpt-deep"}, "is an image task"),
        ({"task": "vpt-deep", "text": "x", "image": _b64(_png(_picture(2)))}, "is an image task"),
        ({"task": "nope", "image": _b64(_png(_picture(2)))}, "unknown task"),
    ],
)
def test_image_tasks_refuse_text(vision_client, item, fragment):
    response = vision_client.post("/classify", json={"inputs": [item]})
    assert response.status_code in (400, 404), response.text
    assert fragment in response.json()["error"]["message"]
    chat = vision_client.post(
        "/v1/chat/completions",
        json={"model": "vpt-deep", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 400 and "is an image task" in chat.json()["error"]["message"]


def test_python_client_sends_images(vision_client, vision_models, tmp_path, monkeypatch):
    """`Client.classify_images` (paths or bytes) against the app, through its transport."""
    from softprompt import client as client_module

    path = tmp_path / "a.png"
    path.write_bytes(_png(_picture(5)))

    class Response:  # urllib's response, answered by the in-process app
        def __init__(self, body):
            self.body = body

        def read(self):
            return self.body

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(request, timeout=None):
        response = vision_client.post(
            request.full_url[len("http://x") :], content=request.data, headers=request.headers
        )
        assert response.status_code == 200, response.text
        return Response(response.content)

    monkeypatch.setattr(client_module.urllib.request, "urlopen", urlopen)
    got = client_module.Client("http://x").classify_images(
        [("vpt-deep", str(path)), ("vpt-shallow", path.read_bytes())]
    )
    for item, task in zip(got, ["vpt-deep", "vpt-shallow"], strict=True):
        model = vision_models[task][1]
        assert item["task"] == task
        assert item["scores"] == pytest.approx(model.predict([str(path)])[0]["scores"], abs=1e-5)


def test_an_image_sent_to_a_text_task_is_refused(engine):
    with TestClient(create_app(engine)) as client:
        item = {"task": "movie", "image": _b64(_png(_picture(3)))}
        response = client.post("/classify", json={"inputs": [item]})
        assert response.status_code == 400
        assert "takes text, not an image" in response.json()["error"]["message"]
        fine = client.post("/classify", json={"inputs": [{"task": "movie", "text": "good"}]})
        assert fine.status_code == 200  # the server is unharmed
