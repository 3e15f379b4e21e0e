"""GGUF -> a plain HF folder in the chosen dtype, one tensor at a time.

transformers' own GGUF loader dequantizes every tensor to float32 into one dict and then
copies them into a float32 model: about three float32 copies of the model at its peak
(9.1 GB for a 1.1 GB GGUF of Qwen2.5-Coder-1.5B) and a float32 cache. Here the file is
memory-mapped, each tensor is dequantized (large ones in row chunks), hashed for the
fingerprint in float32, cast to the target dtype and kept; only the final weights and
one chunk are ever resident, so the peak stays near the cache's own size (2 bytes a
parameter in bf16). transformers' GGUF name map and tensor processors are reused, so the
weights equal what its loader produces.
"""

from __future__ import annotations

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


def convert_weights(
    reader: Any, config: Any, dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], str]:
    """Every weight of the GGUF as an HF-named `dtype` tensor, and the source fingerprint
    (the float32 recipe of `softprompt.backbones.fingerprint`, so it equals the hash of the
    float32 conversion). Raises `Unsupported` where transformers' loader is needed."""
    processor, sources, model = _parts(reader, config)
    state = model.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for name, t in state.items():
        groups.setdefault(id(t), []).append(name)
    hasher = Fingerprinter(arch_fields(model.config))
    weights: dict[str, torch.Tensor] = {}
    first_name: dict[int, str] = {}
    for name in sorted(state):
        t = state[name]
        if id(t) in first_name:
            hasher.alias(name, first_name[id(t)], t)
            continue
        first_name[id(t)] = name
        carried = [n for n in groups[id(t)] if n in sources]
        if not carried:
            raise Unsupported(f"the GGUF file carries no tensor for {name}")
        if hashed_dtype(t.dtype) != torch.float32:
            raise Unsupported(f"{name} is {t.dtype}")
        source = sources[carried[0]]
        weights[carried[0]] = _convert_tensor(source, processor, dtype, hasher, name, t.shape)
        _drop_mapped_pages(reader)
    return weights, hasher.hexdigest()


def write_folder(gguf_path: Path, out_dir: Path, dtype: torch.dtype) -> str:
    """Convert `gguf_path` into an HF folder (weights in `dtype`, config, generation config,
    tokenizer) at `out_dir`; return the source fingerprint."""
    from gguf import GGUFReader
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    folder, filename = gguf_path.parent, gguf_path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=filename, local_files_only=True)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename, local_files_only=True)
    reader = GGUFReader(gguf_path)
    weights, fp = convert_weights(reader, config, dtype)
    del reader
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(weights, out_dir / "model.safetensors", metadata={"format": "pt"})
    del weights
    config.dtype = dtype
    config.save_pretrained(out_dir)
    GenerationConfig.from_model_config(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return fp
