"""Fixtures for the vision tests: a tiny random DINOv2 and a tiny image folder."""

from __future__ import annotations

import pytest
import torch

from softprompt.backbones import Backbone
from softprompt.backbones.tiny_vision import tiny_dinov2, write_class_images

torch.set_num_threads(1)


@pytest.fixture
def dinov2() -> Backbone:
    return tiny_dinov2()


@pytest.fixture
def image_dataset(tmp_path):
    from softprompt.data import load_dataset

    write_class_images(tmp_path / "images")
    return load_dataset(str(tmp_path / "images"))
