"""Peak memory of a stretch of work, as `softprompt compare` reports it per unit: on
CUDA, torch's peak allocated bytes; on the CPU, the highest resident set size (read
from /proc every 20 ms) above the RSS at the start. Python's tracemalloc is not used:
it does not see torch's tensor memory.

On the CPU the start is taken after handing freed heap memory back to the OS (glibc's
`malloc_trim`). Without it, memory an earlier unit of the same process freed stays
resident in malloc's arenas, the next unit reuses it without the RSS growing, and its
figure comes out near zero (a 30-step soft-prompt unit once read 0.4 MB)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
from pathlib import Path
from typing import Any

import torch


class PeakMemory:
    """Peak memory of a stretch of work (see the module docstring for what is measured)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.peak = self.start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def describe(device: torch.device) -> str:
        return "peak CUDA memory" if device.type == "cuda" else "peak RSS increase"

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        release_freed_memory()
        self.start = self.peak = _rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def used(self) -> int:
        return max(self.peak - self.start, 0)


def release_freed_memory() -> None:
    """Collect garbage and return the heap's free pages to the OS, so the RSS counts
    only live memory; a no-op where the C library has no `malloc_trim` (not glibc)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:
        trim(0)


def _rss() -> int:
    """Resident set size in bytes (Linux /proc; 0 where there is no /proc)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")
