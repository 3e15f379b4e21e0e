"""The prompt file's checksum covers its JSON header, the header's shape is checked before
use, and files written as "softprompt/1" still load. (Issue 11, case 5.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from softprompt import cli, promptfile
from softprompt.errors import PromptFileError
from softprompt.model import PromptModel, load_prompt_meta
from softprompt.promptfile import read_prompt_file


@pytest.fixture
def saved(make_model, llama, tmp_path) -> Path:
    model = make_model(
        llama, n_tokens=3, task={"verbalizer": {"negative": " bad", "positive": " good"}}
    )
    return model.save(tmp_path / "prompt.safetensors", dataset="toy")


def _metadata_span(data: bytes) -> tuple[int, int]:
    """Byte range of the softprompt JSON document inside the safetensors header."""
    size = int.from_bytes(data[:8], "little")
    raw = data[8 : 8 + size]
    document = json.loads(raw)["__metadata__"]["softprompt"]
    start = raw.index(b'"softprompt":"') + len(b'"softprompt":"')
    return 8 + start, 8 + start + len(json.dumps(document)) - 2


def test_header_is_canonical_json_and_versioned(saved):
    data = saved.read_bytes()
    start, end = _metadata_span(data)
    document = json.loads(json.loads(b'"' + data[start:end] + b'"'))
    assert document["format"] == "softprompt/2"
    expected = json.dumps(document, sort_keys=True, separators=(",", ":"))
    assert json.loads(b'"' + data[start:end] + b'"') == expected


def test_flipped_byte_in_the_template_fails_the_checksum(saved, llama):
    """The issue's case: it loaded silently and changed every score."""
    data = bytearray(saved.read_bytes())
    at = data.index(b"review : {text}") + 2  # "review" -> "rexiew"
    data[at] ^= ord("v") ^ ord("x")
    saved.write_bytes(bytes(data))
    with pytest.raises(PromptFileError, match="does not match its checksum"):
        PromptModel.load(saved, llama)


def test_flipped_byte_in_a_label_word_fails_the_checksum(saved):
    data = bytearray(saved.read_bytes())
    at = data.index(b' good\\"') + 2  # the label word, JSON-escaped in the header
    data[at] ^= 0x01
    saved.write_bytes(bytes(data))
    with pytest.raises(PromptFileError, match="checksum"):
        read_prompt_file(saved)


def test_every_flipped_header_byte_is_a_prompt_file_error(saved, capsys):
    """A flip anywhere in the JSON header: never a KeyError/TypeError traceback, never silent."""
    original = saved.read_bytes()
    start, end = _metadata_span(original)
    for position in range(start, end):
        for mask in (0x01, 0x20):
            data = bytearray(original)
            data[position] ^= mask
            saved.write_bytes(bytes(data))
            with pytest.raises(PromptFileError):
                read_prompt_file(saved)
    data = bytearray(original)
    data[original.index(b"task") + 1] ^= 0x01  # "task" -> "tbsk": the KeyError
    saved.write_bytes(bytes(data))
    assert cli.main(["info", str(saved)]) == 2
    assert "Traceback" not in capsys.readouterr().err


# --- softprompt/1 files load, migrated in memory ---------------------------------------


def _write_v1(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """What softprompt wrote before the header was checksummed."""
    header = dict(meta, format="softprompt/1", sha256=promptfile.tensor_digest(tensors))
    path.write_bytes(st_save(tensors, metadata={"softprompt": json.dumps(header, sort_keys=True)}))
    return path


def test_v1_file_loads_and_is_migrated(saved, llama, tmp_path):
    tensors, meta = read_prompt_file(saved)
    meta = {k: v for k, v in meta.items() if k not in ("format", "sha256")}
    old = _write_v1(tmp_path / "v1.safetensors", tensors, meta)
    loaded, header = read_prompt_file(old)
    assert header["format"] == promptfile.FORMAT and header["task"] == meta["task"]
    assert torch.equal(loaded["method.embeddings"], tensors["method.embeddings"])
    model = PromptModel.load(old, llama)
    assert model.predict(["good fun"]) == PromptModel.load(saved, llama).predict(["good fun"])
    resaved = model.save(tmp_path / "v2.safetensors")
    assert load_prompt_meta(resaved)["format"] == "softprompt/2"
    data = bytearray(old.read_bytes())  # a v1 file's tensors are still checked
    data[-3] ^= 0x10
    old.write_bytes(bytes(data))
    with pytest.raises(PromptFileError, match="checksum"):
        read_prompt_file(old)


def _drop(meta: dict, *path: str) -> dict:
    node = meta
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return meta


def _set(value, *path: str):
    def change(meta: dict) -> dict:
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return meta

    return change


MALFORMED = {
    "no task": lambda m: _drop(m, "task"),
    "no method name": lambda m: _drop(m, "method", "name"),
    "no backbone fingerprint": lambda m: _drop(m, "backbone", "fingerprint"),
    "task a list": _set([1, 2], "task"),
    "labels a string": _set("negative", "task", "labels"),
    "template a number": _set(5, "task", "template"),
    "unknown task key": _set("x", "task", "tmplate"),
    "method name a number": _set(7, "method", "name"),
    "unknown method": _set("no-such-method", "method", "name"),
    "n_tokens a word": _set("ten", "method", "options", "n_tokens"),
    "unknown method option": _set(1, "method", "options", "colour"),
    "parameters a string": _set("many", "trainable_parameters"),
    "no task head": lambda m: _drop(m, "task", "head"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_v1_metadata_is_a_prompt_file_error(saved, llama, tmp_path, capsys, case):
    """v1 headers are not checksummed, so their shape is all that stands before a traceback."""
    tensors, meta = read_prompt_file(saved)
    meta = MALFORMED[case]({k: v for k, v in meta.items() if k not in ("format", "sha256")})
    old = _write_v1(tmp_path / "v1.safetensors", tensors, meta)
    with pytest.raises(PromptFileError, match="metadata is malformed"):
        PromptModel.load(old, llama)
    for command in (["info", str(old)], ["predict", str(old), "x"]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "metadata is malformed" in err


def test_unknown_future_format_names_what_it_reads(saved):
    tensors, meta = read_prompt_file(saved)
    saved.write_bytes(
        st_save(tensors, metadata={"softprompt": json.dumps(dict(meta, format="softprompt/9"))})
    )
    with pytest.raises(PromptFileError, match="softprompt/9.*softprompt/2, softprompt/1"):
        read_prompt_file(saved)
