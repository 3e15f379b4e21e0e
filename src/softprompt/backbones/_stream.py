"""Quantize on load: an HF folder's safetensors read tensor by tensor into a model built
on the meta device, each Linear quantized as soon as it is filled.

`from_pretrained` followed by `quantize_` holds the whole float model before torchao
reduces it (and the memory-mapped file's pages on top), so `--quantize int8` peaked above
the float32 load (1.20x on SmolLM2-135M). Here only the quantized weights, the
unquantized ones (embeddings, norms) and one float tensor are ever resident: each tensor
is read with plain file reads (no memory map whose pages would count as resident),
hashed for the source fingerprint in its stored dtype (the float32 recipe of
`softprompt.backbones.fingerprint`, so the value equals the unquantized load's), cast,
placed, and its Linear quantized once all of that Linear's tensors are in.

Only folders whose file names match the model's own state-dict names load this way;
anything else (renamed keys, a missing persistent buffer, .bin weights) returns None and
the caller falls back to `from_pretrained` + quantize.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from softprompt.backbones._core import Fingerprinter, arch_fields, dtype_name, hashed_dtype
from softprompt.backbones._hf import from_config

_DTYPES = {
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class _Entry:
    """Where one tensor's bytes are in a safetensors file."""

    def __init__(self, file: Path, base: int, header: dict[str, Any]) -> None:
        self.file = file
        self.dtype = _DTYPES[header["dtype"]]
        self.shape = tuple(header["shape"])
        self.start = base + header["data_offsets"][0]
        self.end = base + header["data_offsets"][1]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def read(self, into: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor (stored dtype, CPU), read into `into` (a flat buffer of that dtype
        with room for it) or into fresh memory."""
        numel = self.numel
        out = torch.empty(numel, dtype=self.dtype) if into is None else into[:numel]
        raw = out.view(torch.uint8) if numel else out
        if raw.numel() != self.end - self.start:
            raise ValueError(f"{self.file.name}: a tensor's byte range does not fit its shape")
        with self.file.open("rb") as handle:
            handle.seek(self.start)
            if numel and handle.readinto(memoryview(raw.numpy())) != raw.numel():
                raise ValueError(f"{self.file.name} is truncated")
        return out.reshape(self.shape)

    def row_blocks(self, values: int) -> Iterator[torch.Tensor]:
        """A 2-D tensor's rows in order (stored dtype, CPU), about `values` values a block,
        each read with plain file reads into one reused buffer (valid until the next)."""
        count, width = self.shape
        rows = max(1, values // max(1, width))
        buffer = torch.empty(rows * width, dtype=self.dtype)
        raw = buffer.view(torch.uint8)
        row_bytes = raw.numel() // rows
        with self.file.open("rb") as handle:
            for start in range(0, count, rows):
                n = min(rows, count - start)
                handle.seek(self.start + start * row_bytes)
                if handle.readinto(memoryview(raw[: n * row_bytes].numpy())) != n * row_bytes:
                    raise ValueError(f"{self.file.name} is truncated")
                yield buffer[: n * width].view(n, width)


def safetensors_index(folder: Path) -> dict[str, _Entry] | None:
    """Every tensor of the folder's safetensors files by name (headers only), or None
    where there are none or one holds a dtype this reader does not know."""
    index: dict[str, _Entry] = {}
    files = sorted(folder.glob("*.safetensors"))
    for f in files:
        try:
            with f.open("rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(size))
        except (OSError, ValueError):
            return None
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPES:
                return None
            index[name] = _Entry(f, 8 + size, entry)
    return index or None


def _plan(model: torch.nn.Module, index: dict[str, _Entry]) -> dict[str, list[str]] | None:
    """For each distinct tensor of the model (tied names grouped), its state-dict names,
    keyed by the file name that carries it; None where the file does not cover the model
    (a missing tensor or another shape)."""
    state = model.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for name in sorted(state):
        groups.setdefault(id(state[name]), []).append(name)
    plan: dict[str, list[str]] = {}
    for names in groups.values():
        carried = [n for n in names if n in index]
        if not carried or index[carried[0]].shape != tuple(state[names[0]].shape):
            return None
        plan[carried[0]] = names
    return plan


def _place(model: torch.nn.Module, names: list[str], value: torch.Tensor) -> set[str]:
    """Put `value` under every (tied) name; return the owning modules' names."""
    owners = set()
    shared: torch.nn.Parameter | None = None
    for name in names:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        if attr in module._parameters:
            if shared is None:
                shared = torch.nn.Parameter(value, requires_grad=False)
            module._parameters[attr] = shared
        else:
            module._buffers[attr] = value
        owners.add(module_name)
    return owners


def _filled(module: torch.nn.Module) -> bool:
    return not any(t.is_meta for t in module.parameters(recurse=False))


class _Scratch:
    """Reused buffers for the float weights of the Linears about to be quantized: one
    per dtype, as large as the largest such weight. A fresh allocation per weight, freed
    once quantized, leaves holes the allocator does not give back to the system, and the
    resident memory grew to the full float size (measured 1.24x the float32 weights)."""

    def __init__(self, numel: int) -> None:
        self.numel = numel  # the largest weight that goes through it
        self._buffers: dict[torch.dtype, torch.Tensor] = {}

    def get(self, dtype: torch.dtype, numel: int) -> torch.Tensor:
        held = self._buffers.get(dtype)
        if held is None:
            held = self._buffers[dtype] = torch.empty(max(numel, self.numel), dtype=dtype)
        return held[:numel]


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def fix_mmap_threshold(nbytes: int = 128 * 1024) -> bool:
    """glibc: allocations above `nbytes` always mmapped, freed straight back to the OS;
    the threshold no longer rises. Dynamically, each freed mmapped chunk (up to 32 MiB)
    raises it to that chunk's size, and every smaller tensor after that comes from a
    heap that fragments and is not given back. False where this is not glibc."""
    mallopt = getattr(_LIBC, "mallopt", None)
    if mallopt is None or not sys.platform.startswith("linux"):
        return False
    # the trim threshold too: a dynamic rise also set it to twice the mmap threshold
    fixed = bool(mallopt(M_MMAP_THRESHOLD, nbytes)) and bool(mallopt(M_TRIM_THRESHOLD, nbytes))
    _give_back_freed()
    return fixed


def _give_back_freed() -> None:
    """Return the C heap's free pages to the system (glibc's malloc_trim): a layer's
    quantization temporaries, freed between the long-lived blocks, otherwise stay
    resident, and the peak drifted from 0.32x to 0.64x the float32 weights run to run."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


class _Arena:
    """One int8 block for the quantized weights of every layer, sliced per weight: the
    long-lived data reserved first and together, so the allocator's heap is not a row
    of small kept blocks between freed temporaries (that grew the resident memory)."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self._block = torch.empty(sum(sizes.values()), dtype=torch.int8)
        self._at: dict[str, tuple[int, int]] = {}
        start = 0
        for name, numel in sizes.items():
            self._at[name] = (start, start + numel)
            start += numel

    def take(self, name: str) -> torch.Tensor | None:
        if name not in self._at:
            return None
        start, end = self._at[name]
        return self._block[start:end]


def _quantized_next(
    model: torch.nn.Module, names: list[str], chosen: Callable, filled: bool = True
) -> bool:
    """Whether this tensor is the last one a chosen Linear waits for (its weight, alone
    under its name): it is quantized right after, so its float copy may live in scratch.
    `filled=False`: only whether it is such a weight (its other tensors not checked)."""
    if len(names) != 1:
        return False
    module_name, _, attr = names[0].rpartition(".")
    module = model.get_submodule(module_name)
    if attr != "weight" or not chosen(module, module_name):
        return False
    others = [t for n, t in module.named_parameters(recurse=False) if n != attr]
    return not filled or all(not t.is_meta for t in others)


def load_quantized(
    cls: Any,
    path: Path,
    config: Any,
    dtype: torch.dtype,
    *,
    hash_source: bool,
    keep: Callable[[torch.nn.Module], Callable[[torch.nn.Module, str], bool]],
    quantize_one: Callable[[torch.nn.Module, str, torch.Tensor], None],
    quantize_rows: Callable[[torch.Size, torch.dtype, Iterator[torch.Tensor]], torch.Tensor]
    | None = None,
    reserve_int8: bool = True,
) -> tuple[torch.nn.Module, str | None] | None:
    """The model in `dtype` with the Linear layers `keep(model)` selects quantized by
    `quantize_one(parent, child_name, qdata)` as they fill (`qdata`: its one-byte-a-value
    slice of a block reserved up front), and the source fingerprint when
    `hash_source`; None where the folder cannot be read this way (the caller falls back).
    `quantize_rows(shape, dtype, row_blocks)`: makes the embedding table's and the LM
    head's weights from their rows, read a block at a time (never whole in float).
    `reserve_int8=False`: no block is reserved and `qdata` is None (NF4 packs its own)."""
    index = safetensors_index(path)
    if index is None:
        return None
    model = _empty_model(cls, config, dtype)
    plan = _plan(model, index)
    if plan is None:
        return None
    chosen = keep(model)
    transient = {c for c, names in plan.items() if _quantized_next(model, names, chosen, False)}
    scratch = _Scratch(max((index[c].numel for c in transient), default=0))
    arena = _Arena({plan[c][0]: index[c].numel for c in transient} if reserve_int8 else {})
    hasher = Fingerprinter(arch_fields(model.config)) if hash_source else None
    first = {n: names[0] for names in plan.values() for n in names}  # tied -> its first
    carrier = {names[0]: carried for carried, names in plan.items()}
    owners_of: dict[str, torch.nn.Module] = dict(model.named_modules())
    state = model.state_dict(keep_vars=True)
    ends = _ends(model) if quantize_rows is not None else set()
    for name in sorted(state):
        if first[name] != name:
            if hasher is not None:
                hasher.alias(name, first[name], state[name])
            continue
        carried = carrier[name]
        entry = index[carried]
        if ends & set(plan[carried]) and entry.dtype.is_floating_point and len(entry.shape) == 2:
            _fill_by_rows(model, plan[carried], entry, name, dtype, hasher, quantize_rows)
            continue
        passing = carried in transient and _quantized_next(model, plan[carried], chosen)
        value = _read_cast(entry, name, dtype, scratch, hasher, passing=passing)
        owners = _place(model, plan[carried], value)
        _quantize_filled(model, owners, owners_of, chosen, quantize_one, arena)
        del value
    model.config._name_or_path = str(path)  # as from_pretrained records it
    model.eval()
    return model, hasher.hexdigest() if hasher is not None else None


def _empty_model(cls: Any, config: Any, dtype: torch.dtype) -> torch.nn.Module:
    """The architecture with its parameters on the meta device (buffers real) and tied as
    from_pretrained ties them, so each weight costs memory only once it is read."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # parameters on meta, buffers real
        model = from_config(cls, config, dtype=dtype)
    model.tie_weights()  # from_pretrained ties; from_config leaves tied names apart
    return model


def _fill_by_rows(
    model: torch.nn.Module,
    names: list[str],
    entry: _Entry,
    name: str,
    dtype: torch.dtype,
    hasher: Fingerprinter | None,
    quantize_rows: Callable[[torch.Size, torch.dtype, Iterator[torch.Tensor]], torch.Tensor],
) -> None:
    """The embedding table or LM head made from its rows a block at a time, so the whole
    matrix never exists in float."""
    blocks = _hashed_casts(entry, name, dtype, hasher)
    _place(model, names, quantize_rows(torch.Size(entry.shape), dtype, blocks))
    _give_back_freed()


def _read_cast(
    entry: _Entry,
    name: str,
    dtype: torch.dtype,
    scratch: _Scratch,
    hasher: Fingerprinter | None,
    *,
    passing: bool,
) -> torch.Tensor:
    """One tensor read, hashed as stored (the fingerprint is the source's), then cast to
    `dtype`. A weight quantized next (`passing`) is read and cast in the reused scratch
    buffers, so it never takes fresh memory."""
    value = entry.read(scratch.get(entry.dtype, entry.numel) if passing else None)
    if hasher is not None:
        hasher.add(name, value)
    if value.is_floating_point() and value.dtype != dtype:
        if passing:
            value = scratch.get(dtype, entry.numel).view(entry.shape).copy_(value)
        else:
            value = value.to(dtype)
    return value


def _quantize_filled(
    model: torch.nn.Module,
    owners: set[str],
    owners_of: dict[str, torch.nn.Module],
    chosen: Callable[[torch.nn.Module, str], bool],
    quantize_one: Callable[[torch.nn.Module, str, torch.Tensor], None],
    arena: _Arena,
) -> None:
    """Quantize each chosen Linear among `owners` whose tensors are now all in, at once,
    so its float weight is gone before the next tensor is read."""
    for owner in owners:
        module = owners_of[owner]
        if chosen(module, owner) and _filled(module):
            parent, _, child = owner.rpartition(".")
            quantize_one(model.get_submodule(parent), child, arena.take(f"{owner}.weight"))
            _give_back_freed()


ROW_VALUES = 1 << 16  # an end's values read, hashed and quantized at a time (256 KB float32)


def _ends(model: torch.nn.Module) -> set[str]:
    """State-dict names of the input embedding table and the LM head weight."""
    names = {id(m): n for n, m in model.named_modules()}
    found = set()
    ends = [model.get_input_embeddings()]
    if hasattr(model, "get_output_embeddings"):
        ends.append(model.get_output_embeddings())
    for end in ends:
        if isinstance(end, (torch.nn.Embedding, torch.nn.Linear)) and id(end) in names:
            found.add(f"{names[id(end)]}.weight".lstrip("."))
    return found


def _hashed_casts(
    entry: _Entry, name: str, dtype: torch.dtype, hasher: Fingerprinter | None
) -> Iterator[torch.Tensor]:
    """An end's rows in `dtype`, a block at a time, each hashed in order as it passes (the
    same bytes `Fingerprinter.add` hashes for the whole tensor)."""
    if hasher is not None:
        hasher.begin(name, list(entry.shape), dtype_name(hashed_dtype(entry.dtype)))
    for block in entry.row_blocks(ROW_VALUES):
        if hasher is not None:
            hasher.update(block)
        yield block.to(dtype)
