"""GGUF -> a plain HF folder in the chosen dtype, one tensor at a time.

transformers' own GGUF loader dequantizes every tensor to float32 into one dict and then
copies them into a float32 model: about three float32 copies of the model at its peak
(9.1 GB for a 1.1 GB GGUF of Qwen2.5-Coder-1.5B) and a float32 cache. Here the file is
memory-mapped, each tensor is dequantized (large ones in row chunks), hashed for the
fingerprint in float32, cast to the target dtype and written straight into the
safetensors file (its header is known up front from the model's shapes); only one
converted tensor and one chunk are ever resident, so the peak no longer grows with the
model. transformers' GGUF name map and tensor processors are reused, so the weights
equal what its loader produces.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softprompt.backbones._core import Fingerprinter, arch_fields, hashed_dtype
from softprompt.errors import BackboneError

CHUNK_ELEMENTS = 1 << 20  # float32 values dequantized at a time for a large tensor (4 MB)


class Unsupported(Exception):
    """This GGUF needs transformers' own (float32) loader: a processor renames or merges
    tensors, or the model has weights the file does not carry."""


def _parts(reader: Any, config: Any) -> tuple[Any, dict[str, Any], torch.nn.Module]:
    """transformers' tensor processor and GGUF -> HF name map, and the model on meta."""
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        read_field,
    )

    architecture = read_field(reader, "general.architecture")[0]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    processor_class = TENSOR_PROCESSORS.get(architecture, TensorProcessor)
    if processor_class.__name__ not in ("TensorProcessor", "LlamaTensorProcessor"):
        raise Unsupported(f"GGUF architecture {architecture}")
    processor = processor_class(config=config.to_dict())
    mapping = get_gguf_hf_weights_map(model, processor)
    sources = {mapping[t.name]: t for t in reader.tensors if t.name in mapping}
    return processor, sources, model


def _whole(tensor: Any, processor: Any) -> bool:
    """Whether the processor rewrites this tensor as a whole (llama's Q/K un-permutation);
    every other tensor passes through unchanged, so it can be dequantized in chunks."""
    if type(processor).__name__ == "TensorProcessor":
        return False
    return ".attn_q." in tensor.name or ".attn_k." in tensor.name


def _chunks(tensor: Any, processor: Any) -> Iterator[np.ndarray]:
    """The tensor's float32 values, in row chunks (or whole where the processor needs it)."""
    from gguf import dequantize

    data = tensor.data
    if _whole(tensor, processor) or data.ndim < 2:
        result = processor.process(weights=dequantize(data, tensor.tensor_type), name=tensor.name)
        if result.name != tensor.name:
            raise Unsupported(f"tensor {tensor.name} is renamed by its processor")
        yield np.ascontiguousarray(result.weights, dtype=np.float32)
        return
    cols = max(1, int(np.prod(tensor.shape)) // max(1, data.shape[0]))
    step = max(1, CHUNK_ELEMENTS // cols)
    for start in range(0, data.shape[0], step):
        part = dequantize(data[start : start + step], tensor.tensor_type)
        yield np.ascontiguousarray(part, dtype=np.float32)


def _convert_tensor(
    tensor: Any, processor: Any, dtype: torch.dtype, hasher: Fingerprinter, name: str, shape
) -> torch.Tensor:
    """Dequantize one GGUF tensor into a new `dtype` tensor of `shape`, hashing its float32
    values chunk by chunk (sha256 of the pieces in order = sha256 of the whole). The
    result is allocated once and filled, so no chunk list or concatenation doubles it."""
    hasher.begin(name, list(shape), "float32")
    out = torch.empty(int(np.prod(shape)), dtype=dtype)  # flat, reshaped at the end
    at = 0
    for chunk in _chunks(tensor, processor):
        flat = chunk.reshape(-1)
        if not flat.flags.writeable:  # a view of the read-only memory map (F32 tensors)
            flat = flat.copy()
        values = torch.from_numpy(flat)
        if at + values.numel() > out.numel():
            break
        hasher.update(values)
        out[at : at + values.numel()] = values
        at += values.numel()
    if at != out.numel():
        raise BackboneError(f"GGUF tensor {tensor.name} does not fit {name}'s shape {list(shape)}")
    return out.reshape(shape)


def _drop_mapped_pages(reader: Any) -> None:
    """Let go of the file pages the last tensor was read from: they are clean and could be
    reclaimed anyway, but until then they count in the process's resident memory, which
    would grow by the whole GGUF file over the conversion."""
    mapped = getattr(getattr(reader, "data", None), "_mmap", None)
    if isinstance(mapped, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapped.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # not supported here: only the RSS figure suffers
            pass


def _plan(reader: Any, config: Any) -> tuple[Any, list[tuple[str, str, Any, Any]], Any]:
    """The conversion in sorted-name order (the fingerprint's): for each state-dict name,
    (name, its first tied name or "", the HF name the file carries, the GGUF tensor and
    shape packed as (tensor, shape)); and the hasher. `Unsupported` where a weight is
    missing or not floating point."""
    processor, sources, model = _parts(reader, config)
    state = model.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for name, t in state.items():
        groups.setdefault(id(t), []).append(name)
    steps: list[tuple[str, str, Any, Any]] = []
    first_name: dict[int, str] = {}
    for name in sorted(state):
        t = state[name]
        if id(t) in first_name:
            steps.append((name, first_name[id(t)], None, t))
            continue
        first_name[id(t)] = name
        carried = [n for n in groups[id(t)] if n in sources]
        if not carried:
            raise Unsupported(f"the GGUF file carries no tensor for {name}")
        if hashed_dtype(t.dtype) != torch.float32:
            raise Unsupported(f"{name} is {t.dtype}")
        steps.append((name, "", carried[0], (sources[carried[0]], t)))
    return processor, steps, Fingerprinter(arch_fields(model.config))


def _converted(reader: Any, config: Any, dtype: torch.dtype):
    """(the carried tensors' HF names and shapes, an iterator of (name, `dtype` tensor)
    converted one at a time, the hasher, filled as the iterator runs)."""
    processor, steps, hasher = _plan(reader, config)
    layout = [(carried, tuple(t.shape)) for _, _, carried, (_, t) in
              (s for s in steps if s[2] is not None)]  # fmt: skip

    def tensors():
        for name, alias, carried, item in steps:
            if carried is None:
                hasher.alias(name, alias, item)
                continue
            source, meta = item
            yield carried, _convert_tensor(source, processor, dtype, hasher, name, meta.shape)
            _drop_mapped_pages(reader)

    return layout, tensors(), hasher


_SAFETENSORS_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def _write_safetensors(
    path: Path, layout: list[tuple[str, tuple]], dtype: torch.dtype, tensors
) -> None:
    """A safetensors file written tensor by tensor: the header (all shapes are known up
    front) and then each tensor's bytes as it is converted, so no more than one converted
    tensor is ever held (save_file needs them all at once: the whole model in `dtype`)."""
    size = torch.empty((), dtype=dtype).element_size()
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in layout:
        n = int(np.prod(shape)) * size
        header[name] = {"dtype": _SAFETENSORS_NAMES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + n]}  # fmt: skip
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    expected = iter(layout)
    with path.open("wb") as out:
        out.write(len(raw).to_bytes(8, "little") + raw)
        for name, tensor in tensors:
            if next(expected)[0] != name:
                raise BackboneError(f"GGUF conversion wrote {name} out of order")
            flat = tensor.reshape(-1)
            if flat.numel():
                out.write(memoryview(flat.view(torch.uint8).numpy()))
            del tensor, flat


def write_folder(gguf_path: Path, out_dir: Path, dtype: torch.dtype) -> str:
    """Convert `gguf_path` into an HF folder (weights in `dtype`, config, generation config,
    tokenizer) at `out_dir`; return the source fingerprint."""
    from gguf import GGUFReader
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    folder, filename = gguf_path.parent, gguf_path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=filename, local_files_only=True)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename, local_files_only=True)
    reader = GGUFReader(gguf_path)
    layout, tensors, hasher = _converted(reader, config, dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_safetensors(out_dir / "model.safetensors", layout, dtype, tensors)
    fp = hasher.hexdigest()
    del reader
    config.dtype = dtype
    config.save_pretrained(out_dir)
    GenerationConfig.from_model_config(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return fp
