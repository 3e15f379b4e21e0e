"""Prompt files refuse every kind of damage with a `PromptFileError` that says what is wrong,
and are written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from softprompt import files, promptfile
from softprompt.api import load_prompt
from softprompt.backbones.tiny import tiny_llama
from softprompt.errors import PromptFileError
from softprompt.model import PromptModel, load_prompt_meta
from softprompt.promptfile import read_prompt_file, save_prompt_file


@pytest.fixture
def saved(make_model, llama, tmp_path) -> Path:
    return make_model(llama, n_tokens=5).save(tmp_path / "prompt.safetensors")


def _load_error(path, backbone) -> str:
    with pytest.raises(PromptFileError) as info:
        PromptModel.load(path, backbone)
    message = str(info.value)
    assert str(path) in message, "the error should name the file"
    return message


def test_good_file_reads(saved):
    tensors, meta = read_prompt_file(saved)
    assert list(tensors) == ["method.embeddings"] and tensors["method.embeddings"].shape == (5, 32)
    assert meta["format"] == promptfile.FORMAT
    assert meta["sha256"] == promptfile.file_checksum(meta, tensors)


def test_fingerprint_mismatch(saved, llama):
    other = tiny_llama(seed=1)
    assert other.fingerprint != llama.fingerprint
    message = _load_error(saved, other)
    assert (
        "fingerprint" in message and llama.fingerprint in message and other.fingerprint in message
    )
    assert "--backbone tiny-llama" in message
    # with the check off, a prompt of the right shape loads onto any backbone
    assert PromptModel.load(saved, other, check_fingerprint=False).method.embeddings.shape == (
        5,
        32,
    )


def test_load_prompt_api_checks_fingerprint_too(saved):
    with pytest.raises(PromptFileError, match="fingerprint"):
        load_prompt(saved, tiny_llama(seed=1))


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.1, 12, 4])
def test_truncated_file(saved, llama, keep):
    data = saved.read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else keep
    assert 0 < size < len(data)
    saved.write_bytes(data[:size])
    message = _load_error(saved, llama)
    assert "truncated or corrupt" in message


def test_empty_file(saved, llama):
    saved.write_bytes(b"")
    assert "empty" in _load_error(saved, llama)


@pytest.mark.parametrize("seed", range(5))
def test_random_garbage(tmp_path, llama, seed):
    path = tmp_path / "garbage.safetensors"
    gen = torch.Generator().manual_seed(seed)
    path.write_bytes(
        bytes(torch.randint(0, 256, (200 + 100 * seed,), generator=gen, dtype=torch.uint8).tolist())
    )
    assert "not a readable prompt file" in _load_error(path, llama)


def test_text_file(tmp_path, llama):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not the tensors you are looking for\n" * 20)
    assert "not a readable prompt file" in _load_error(path, llama)


@pytest.mark.parametrize("offset", [1, 7, 64])
def test_flipped_byte_in_tensor_data(saved, llama, offset):
    data = bytearray(saved.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    position = len(data) - offset
    assert position >= header_end  # inside the tensor bytes
    data[position] ^= 0x5A
    saved.write_bytes(bytes(data))
    message = _load_error(saved, llama)
    assert "checksum" in message


def test_missing_file(tmp_path, llama):
    message = _load_error(tmp_path / "nope.safetensors", llama)
    assert "no such prompt file" in message
    with pytest.raises(PromptFileError, match="no such prompt file"):
        load_prompt_meta(tmp_path / "nope.safetensors")


def test_directory_is_not_a_prompt_file(tmp_path, llama):
    assert "is a folder, not a prompt file" in _load_error(tmp_path, llama)


def test_safetensors_without_softprompt_metadata(tmp_path, llama):
    path = tmp_path / "other.safetensors"
    path.write_bytes(st_save({"method.embeddings": torch.zeros(5, 32)}, metadata={"x": "y"}))
    assert "no softprompt metadata" in _load_error(path, llama)


def test_other_format_is_refused(saved, llama):
    tensors, meta = read_prompt_file(saved)
    raw = dict(meta, format="softprompt/99")
    saved.write_bytes(st_save(tensors, metadata={"softprompt": json.dumps(raw)}))
    assert "softprompt/99" in _load_error(saved, llama)


@pytest.mark.parametrize("payload", ["[1, 2]", "42", '"softprompt/1"'])
def test_metadata_that_is_not_an_object(tmp_path, llama, payload):
    path = tmp_path / "odd.safetensors"
    path.write_bytes(
        st_save({"method.embeddings": torch.zeros(5, 32)}, metadata={"softprompt": payload})
    )
    _load_error(path, llama)


def test_shape_mismatch(saved, llama):
    tensors, meta = read_prompt_file(saved)
    save_prompt_file(saved, {"method.embeddings": tensors["method.embeddings"][:3]}, meta)
    message = _load_error(saved, llama)
    assert "method.embeddings" in message and "(3, 32)" in message and "(5, 32)" in message


def test_missing_and_extra_tensors(saved, llama):
    tensors, meta = read_prompt_file(saved)
    save_prompt_file(saved, {"method.other": tensors["method.embeddings"]}, meta)
    message = _load_error(saved, llama)
    assert "missing ['method.embeddings']" in message and "unexpected ['method.other']" in message


def test_save_is_atomic_when_replace_fails(saved, make_model, llama, monkeypatch):
    before = saved.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        make_model(llama, n_tokens=2).save(saved)
    monkeypatch.undo()
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name], "temp file left behind"
    assert PromptModel.load(saved, llama).method.embeddings.shape == (5, 32)


def test_save_is_atomic_when_write_fails_midway(saved, make_model, llama, monkeypatch):
    before = saved.read_bytes()

    def broken_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(files.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        make_model(llama, n_tokens=2).save(saved)
    monkeypatch.undo()
    assert saved.read_bytes() == before
    assert os.listdir(saved.parent) == [saved.name]


def test_save_creates_parent_folders_and_overwrites(make_model, llama, tmp_path):
    path = tmp_path / "a" / "b" / "p.safetensors"
    make_model(llama, n_tokens=2).save(path)
    make_model(llama, n_tokens=3).save(path)
    assert read_prompt_file(path)[0]["method.embeddings"].shape == (3, 32)
    assert os.listdir(path.parent) == ["p.safetensors"]
