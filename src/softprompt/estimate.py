"""Memory and time a run will need, before it runs (`softprompt estimate`).

The frozen weights, the prompt and its optimizer state are counted exactly from the
model as built (the weights in the dtype / quantization they are held in; the prompt,
its gradient and AdamW's two moments in float32: 16 bytes a trainable parameter). What
a step needs beyond them (activations kept for the backward pass, gradients, scratch)
depends on the architecture, the kernels and the allocator, so it is measured rather
than modelled: a short calibration runs real steps on this device at two small batch
sizes and extrapolates linearly to the batch asked for. Memory is measured as the
process's peak resident set (Linux: VmHWM, reset before each step through
/proc/self/clear_refs after returning freed heap pages with malloc_trim) or, on CUDA,
as the allocator's peak; elsewhere the step's working memory is left out and said so.

Allocator slack is the one thing left out, on purpose. glibc's dynamic mmap threshold
rises to the largest tensor freed so far (up to 32 MiB), after which mid-size tensors
come from a heap that fragments, by an amount that depends on the order of allocations
(measured on smollm2-135m, float32, batch 8 x 128 tokens: a fresh training process's
step grew RSS by 1,683 MiB with the dynamic threshold and by 1,089 MiB with it fixed).
`estimate` fixes the threshold at glibc's 128 KiB default in its own process
(mallopt), so it measures what the step's tensors occupy: the figure a run started with
MALLOC_MMAP_THRESHOLD_=131072 reaches, and which a run without it may exceed by up to
about half (said in the report). A backbone loaded with `--quantize int8` or `nf4` fixes the
threshold for its process too (backbones/_precision.py `hold_mmap_threshold`), so there the
estimate is what the run reaches.

Serving K tasks holds the weights once and, per task, its float32 prompt and, on a
causal decoder, its prompt keys/values for every layer (inject/prompt_cache.py keeps them so a
request never recomputes them), plus one forward-only batch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from softprompt.backbones import Backbone, fix_mmap_threshold
from softprompt.data import Example
from softprompt.errors import ConfigError
from softprompt.model import PromptModel
from softprompt.tasks import TaskConfig

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
# param + grad + AdamW exp_avg + exp_avg_sq, float32
PROMPT_STATE_BYTES = 16
GIB = 1024**3


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds; a quantized tensor subclass (torchao, bitsandbytes) counts
    the plain tensors it is made of: torchao's flattened parts, or bitsandbytes' packed
    4-bit data plus its `quant_state` (scales, nested scales, code table)."""
    state = getattr(tensor, "quant_state", None)
    if state is not None and hasattr(state, "as_dict"):
        parts = state.as_dict(packed=False).values()
        return tensor.numel() * tensor.element_size() + sum(
            tensor_bytes(part) for part in parts if isinstance(part, torch.Tensor)
        )
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def module_bytes(module: torch.nn.Module) -> int:
    """Parameters and buffers, each shared tensor once (tied embeddings)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor_bytes(tensor)
    return total


def prompt_kv_bytes(model: PromptModel) -> int:
    """Bytes of one task's cached prompt keys/values: layers x (K, V) x kv heads x slots
    (K/V prefix, BOS, virtual tokens) x head dim, in the backbone's dtype. Encoders cache
    nothing (their prompt attends to the input, so it is recomputed per request)."""
    spec = model.backbone.spec
    if spec.kind != "causal-lm":
        return 0
    with torch.no_grad():
        prompt = model.prompt()
    slots = prompt.length + int(spec.bos_token_id is not None)
    itemsize = torch.empty((), dtype=model.backbone.dtype).element_size()
    return spec.num_layers * 2 * spec.num_kv_heads * slots * spec.head_dim * itemsize


# -- measuring one step -------------------------------------------------------


def _status_bytes(key: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise KeyError(key)


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux), else None."""
    try:
        return _status_bytes("VmRSS")
    except (OSError, KeyError, ValueError):
        return None


def _release_freed() -> None:
    """Hand freed heap pages back to the OS so they do not hide the next step's growth."""
    gc.collect()
    if sys.platform.startswith("linux"):
        name = ctypes.util.find_library("c")
        if name:
            libc = ctypes.CDLL(name)
            if hasattr(libc, "malloc_trim"):
                libc.malloc_trim(0)


def measure_peak(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak memory `fn` adds above what is held when it starts, in bytes (None where this
    platform cannot reset a peak: not Linux, not CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _release_freed()
    try:
        CLEAR_REFS.write_text("5")  # VmHWM := VmRSS
        before = _status_bytes("VmRSS")
    except (OSError, KeyError, ValueError):
        fn()
        return None
    fn()
    return max(0, _status_bytes("VmHWM") - before)


def synthetic_rows(seq_len: int, batch_size: int) -> list[Example]:
    """Rows of about `seq_len` text tokens (one token a word for the usual tokenizers)."""
    text = " ".join(["a"] * seq_len)
    return [Example(text=text, label="positive") for _ in range(batch_size)]


@dataclass(frozen=True)
class Point:
    """One calibration step: batch size, peak bytes above the step's start, seconds."""

    batch_size: int
    peak_bytes: int | None
    seconds: float


def _train_step(model: PromptModel, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    out = model(batch)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    tick = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - tick


def _measure(fn: Callable[[], None], device: torch.device) -> tuple[int | None, float]:
    """(peak bytes, seconds) of one call; the time leaves out the measuring itself."""
    seconds: list[float] = []
    peak = measure_peak(lambda: seconds.append(_timed(fn, device)), device)
    return peak, seconds[0]


@dataclass(frozen=True)
class Calibration:
    """Steps at several batch sizes, and what the very first step needs beyond a later one
    of its size (lazy initialisation, kernel caches; AdamW's state is counted apart)."""

    points: list[Point]
    first_step_bytes: int | None

    def bytes_at(self, batch_size: int) -> int | None:
        """Peak bytes of a run's steps at `batch_size` (the first one included)."""
        if self.first_step_bytes is None or any(p.peak_bytes is None for p in self.points):
            return None
        line = extrapolate(self.points, lambda p: float(p.peak_bytes or 0), batch_size)
        return int(line) + self.first_step_bytes

    def seconds_at(self, batch_size: int) -> float:
        return extrapolate(self.points, lambda p: p.seconds, batch_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "points": [asdict(p) for p in self.points],
            "first_step_bytes": self.first_step_bytes,
        }


def calibrate(
    model: PromptModel,
    rows: Callable[[int], list[Example]],
    batch_sizes: Sequence[int],
    *,
    train: bool,
) -> Calibration:
    """Real steps (training: forward, backward, AdamW step; else forward without grad) at
    each batch size, after one warm-up step at the first; each measured twice and the
    smaller peak and time kept (the first of a size also pays one-off allocations)."""
    device = model.device
    # lr 0: the full AdamW step (state, compute) that leaves the prompt as it was
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=0.0) if train else None

    def step(size: int) -> Callable[[], None]:
        batch = model.collate(rows(size))
        if train:
            return lambda: _train_step(model, optimizer, batch)

        def forward() -> None:
            with torch.no_grad():
                model(batch)

        return forward

    was_training = model.training
    model.train(train)
    try:
        # warm-up: AdamW state, lazy inits, kernel choice; what its peak needs beyond the
        # same size's later steps (less AdamW's state) is the first step's extra
        warm = _measure(step(batch_sizes[0]), device)
        points = []
        for size in batch_sizes:
            run = step(size)
            tries = [_measure(run, device) for _ in range(2)]
            peaks = [p for p, _ in tries if p is not None]
            points.append(Point(size, min(peaks) if peaks else None, min(t for _, t in tries)))
        first = None
        if warm[0] is not None and points[0].peak_bytes is not None:
            state = 8 * sum(p.numel() for p in model.trainable_parameters()) if train else 0
            first = max(0, warm[0] - state - points[0].peak_bytes)
    finally:
        model.train(was_training)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
    return Calibration(points, first)


def extrapolate(points: Sequence[Point], value: Callable[[Point], float], at: int) -> float:
    """The straight line through the first and last points, read at `at` (never below 0;
    slope never below 0: memory and time do not shrink as the batch grows)."""
    first, last = points[0], points[-1]
    if last.batch_size == first.batch_size:
        return value(last) * at / last.batch_size
    slope = max(0.0, (value(last) - value(first)) / (last.batch_size - first.batch_size))
    return max(0.0, value(last) + slope * (at - last.batch_size))


def calibration_sizes(batch_size: int) -> tuple[int, int]:
    """Two batch sizes at most half the one asked for (so calibrating never needs the
    memory being estimated), at least 1 and 2."""
    small = max(1, batch_size // 4)
    return small, max(small + 1, batch_size // 2)


# -- the estimate -----------------------------------------------------------


@dataclass
class Estimate:
    """Bytes and seconds for one configuration; `*_peak_bytes` are what a process holds
    at its highest (`runtime_bytes` is Python, torch and the tokenizer before weights)."""

    backbone: str
    method: str
    dtype: str
    quantize: str
    device: str
    batch_size: int
    seq_len: int
    tasks: int
    runtime_bytes: int
    weight_bytes: int
    prompt_parameters: int
    train_step_bytes: int | None  # activations + gradients + scratch of one step
    serve_step_bytes: int | None  # one forward-only batch
    kv_bytes_per_task: int
    step_seconds: float
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def prompt_state_bytes(self) -> int:
        return PROMPT_STATE_BYTES * self.prompt_parameters

    @property
    def train_peak_bytes(self) -> int:
        held = self.runtime_bytes + self.weight_bytes + self.prompt_state_bytes
        return held + (self.train_step_bytes or 0)

    @property
    def serve_peak_bytes(self) -> int:
        per_task = 4 * self.prompt_parameters + self.kv_bytes_per_task
        held = self.runtime_bytes + self.weight_bytes + self.tasks * per_task
        return held + (self.serve_step_bytes or 0)

    def to_dict(self) -> dict[str, Any]:
        extra = {"train_peak_bytes": self.train_peak_bytes}
        extra["serve_peak_bytes"] = self.serve_peak_bytes
        return {**asdict(self), **extra}

    def lines(self) -> list[str]:
        """The report `softprompt estimate` prints."""
        unmeasured = "not measured on this platform"
        step = _size(self.train_step_bytes) if self.train_step_bytes is not None else unmeasured
        serve = _size(self.serve_step_bytes) if self.serve_step_bytes is not None else unmeasured
        kv = self.kv_bytes_per_task
        return [
            f"{self.backbone} ({self.dtype}, quantize {self.quantize}) on {self.device}, "
            f"method {self.method}, batch {self.batch_size} x ~{self.seq_len} tokens",
            f"training peak  {_size(self.train_peak_bytes)}",
            f"  runtime (python, torch, tokenizer)  {_size(self.runtime_bytes)}",
            f"  frozen weights                      {_size(self.weight_bytes)}",
            f"  prompt + grad + AdamW (float32)     {_size(self.prompt_state_bytes)}"
            f"  ({self.prompt_parameters:,} parameters)",
            f"  one step (activations, grads)       {step}",
            f"  (an {self.quantize} load fixes glibc's mmap threshold, as measured here)"
            if self.quantize in ("int8", "nf4")
            else "  (without MALLOC_MMAP_THRESHOLD_=131072 glibc may add up to half the step again)",
            f"serving {self.tasks} task(s) peak  {_size(self.serve_peak_bytes)}",
            f"  per task: prompt {_size(4 * self.prompt_parameters)}, K/V cache {_size(kv)}",
            f"  one forward batch                   {serve}",
            f"step time  {self.step_seconds:.2f} s at batch {self.batch_size} "
            f"(calibrated on {_sizes(self.calibration.get('train', {}).get('points', []))})",
        ]


def _size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 1024**2:.1f} MiB"


def _sizes(points: list[dict[str, Any]]) -> str:
    return ", ".join(f"batch {p['batch_size']}: {p['seconds']:.2f} s" for p in points)


def _plus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def estimate(
    backbone: Backbone,
    *,
    method: str = "soft-prompt",
    method_options: dict[str, Any] | None = None,
    batch_size: int = 8,
    seq_len: int = 128,
    tasks: int = 1,
    runtime_bytes: int = 0,
) -> Estimate:
    """Memory for training at `batch_size` rows of ~`seq_len` text tokens and for serving
    `tasks` prompts, and the step time, from a short calibration on the backbone's device.

    `runtime_bytes` is what the process held before the backbone was loaded (0 to leave
    it out). On the CPU it is raised to what the process holds once the weights are
    resident, less the weights and the prompt: loading imports the model's code and the
    tokenizer after that first reading (about 150 MiB for SmolLM2), and lazily mapped
    weights only become resident when a forward reads them. Raises ConfigError for a
    size below 1."""
    for name, value in (("--batch-size", batch_size), ("--seq-len", seq_len), ("--tasks", tasks)):
        if value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")
    fix_mmap_threshold()
    task = TaskConfig(labels=["negative", "positive"], template="{text}", max_text_tokens=seq_len)
    model = PromptModel(backbone, task, method, method_options)
    sizes = calibration_sizes(batch_size)
    rows = lambda n: synthetic_rows(seq_len, n)  # noqa: E731
    # serving first: its warm-up pays the forward pass's one-off allocations, which a
    # training run pays too, on top of the backward pass's that its own warm-up shows
    served = calibrate(model, rows, sizes, train=False)
    if runtime_bytes and model.device.type == "cpu":
        runtime_bytes = max(runtime_bytes, _held_besides_weights(model))
    trained = calibrate(model, rows, sizes, train=True)
    trained = dataclasses.replace(
        trained, first_step_bytes=_plus(trained.first_step_bytes, served.first_step_bytes)
    )
    described = backbone.describe()
    return Estimate(
        backbone=backbone.name,
        method=method,
        dtype=described["dtype"],
        quantize=described["quantize"],
        device=str(model.device),
        batch_size=batch_size,
        seq_len=seq_len,
        tasks=tasks,
        runtime_bytes=runtime_bytes,
        weight_bytes=module_bytes(backbone.model),
        prompt_parameters=model.num_trainable(),
        train_step_bytes=trained.bytes_at(batch_size),
        serve_step_bytes=served.bytes_at(batch_size),
        kv_bytes_per_task=prompt_kv_bytes(model),
        step_seconds=trained.seconds_at(batch_size),
        calibration={"train": trained.to_dict(), "serve": served.to_dict()},
    )


def _held_besides_weights(model: PromptModel) -> int:
    """Resident bytes now (after forwards have read every weight) less the frozen weights
    and the prompt: the runtime, model code and tokenizer a run holds all along."""
    _release_freed()
    held = rss_bytes() or 0
    return held - module_bytes(model.backbone.model) - 4 * model.num_trainable()


# -- sizing evaluation batches ------------------------------------------------


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new work: CUDA's free memory, Linux's MemAvailable, else None."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def eval_batch_size(
    model: PromptModel,
    examples: list[Example],
    *,
    budget_bytes: int | None = None,
    largest: int = 256,
    fallback: int = 32,
) -> int:
    """The largest evaluation batch (a power of two up to `largest`) whose forward pass,
    calibrated on the longest rows at batch 1 and 2, fits in `budget_bytes` (default:
    half the memory available now). `fallback` where memory cannot be measured."""
    if not examples:
        return fallback
    device = model.device
    budget = budget_bytes if budget_bytes is not None else available_bytes(device)
    if budget is None:
        return fallback
    if budget_bytes is None:
        budget //= 2
    longest = sorted(examples, key=lambda e: len(e.text))[-2:]
    rows = lambda n: [longest[i % len(longest)] for i in range(n)]  # noqa: E731
    calibration = calibrate(model, rows, (1, 2), train=False)
    if calibration.bytes_at(1) is None:
        return fallback
    size = 1
    while size * 2 <= min(largest, len(examples)):
        if (calibration.bytes_at(size * 2) or 0) > budget:
            break
        size *= 2
    return size
