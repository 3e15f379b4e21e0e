"""What a user is told when the file given as a prompt is not one: a pickle, a folder
(a PEFT adapter folder among them), deeply nested JSON; and that a failed write names
the file it was writing."""

from __future__ import annotations

import errno
import json
import os
import pickle
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from softprompt import cli
from softprompt.errors import PromptFileError
from softprompt.files import atomic_write_bytes
from softprompt.interop.peft import CONFIG, SIDECAR, PeftAdapterError, export_peft
from softprompt.interop.peft_import import import_peft
from softprompt.promptfile import read_prompt_file


class _Tripwire:
    """Unpickling this creates a file: proof that a pickle was run."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self):
        return (Path.touch, (self.mark,))


@pytest.mark.parametrize("kind", ["torch.save", "pickle-2", "pickle-5"])
def test_a_pickle_is_named_a_pickle_and_never_run(tmp_path, kind):
    mark = tmp_path / "ran"
    path = tmp_path / "prompt.bin"
    payload = {"prompt": torch.zeros(2), "trap": _Tripwire(mark)}
    if kind == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(kind[-1])))
    with pytest.raises(PromptFileError) as caught:
        read_prompt_file(path)
    message = str(caught.value)
    assert "pickle" in message and "never loads pickles" in message
    assert "header too large" not in message
    assert not mark.exists()


def test_a_corrupt_safetensors_file_is_not_called_a_pickle(tmp_path):
    path = tmp_path / "p.safetensors"
    path.write_bytes(b"\x80\x02" + b"\x00" * 6 + b"{}")  # a header length of 640, cut short
    with pytest.raises(PromptFileError, match="truncated or corrupt") as caught:
        read_prompt_file(path)
    assert "pickle" not in str(caught.value)


def test_a_folder_is_called_a_folder(tmp_path):
    with pytest.raises(PromptFileError, match="is a folder, not a prompt file") as caught:
        read_prompt_file(tmp_path)
    assert "no such prompt file" not in str(caught.value)


def test_a_run_folder_points_at_its_prompt_file(tmp_path):
    (tmp_path / "prompt.safetensors").write_bytes(b"")
    with pytest.raises(PromptFileError, match="give .*prompt.safetensors"):
        read_prompt_file(tmp_path)


def test_a_peft_adapter_folder_suggests_import_peft(tmp_path, capsys):
    """`info` on a PEFT folder describes it (issue 21) and names the import command."""
    (tmp_path / CONFIG).write_text('{"peft_type": "PROMPT_TUNING"}')
    assert cli.main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PEFT adapter folder" in out and f"softprompt import-peft {tmp_path}" in out


def _deep(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def test_deep_json_in_adapter_config_is_one_line(tmp_path, capsys):
    (tmp_path / CONFIG).write_text('{"peft_type": "PROMPT_TUNING", "x": ' + _deep() + "}")
    argv = ["import-peft", str(tmp_path), "--backbone", "x", "--out", str(tmp_path / "p")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / CONFIG}: JSON nested too deeply" in err


def test_deep_json_in_the_sidecar_is_refused(make_model, llama, tmp_path):
    folder = export_peft(make_model(llama, n_tokens=2), tmp_path / "adapter")
    sidecar = json.loads((folder / SIDECAR).read_text())
    (folder / SIDECAR).write_text(json.dumps(sidecar)[:-1] + ', "x": ' + _deep() + "}")
    with pytest.raises(PeftAdapterError, match="nested too deeply"):
        import_peft(folder, llama, tmp_path / "p.safetensors")


def test_deep_json_in_a_prompt_header_is_refused(tmp_path):
    meta = '{"format": "softprompt/2", "metrics": ' + _deep() + "}"
    path = tmp_path / "p.safetensors"
    path.write_bytes(save({"x": torch.zeros(2)}, metadata={"softprompt": meta}))
    with pytest.raises(PromptFileError, match="not a readable prompt file"):
        read_prompt_file(path)


@pytest.mark.parametrize("step", ["fsync", "replace", "mkstemp"])
def test_a_failed_write_names_its_file_and_leaves_no_temp(tmp_path, monkeypatch, step):
    target = tmp_path / "p.safetensors"
    target.write_bytes(b"old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    module = tempfile if step == "mkstemp" else os
    monkeypatch.setattr(module, step, full)
    with pytest.raises(OSError) as caught:
        atomic_write_bytes(target, b"new")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"]
