"""PeakMemory on the CPU: the RSS a stretch of work adds, even when an earlier stretch in
the same process freed memory that malloc kept (compare's units run one after another)."""

from __future__ import annotations

import sys

import pytest
import torch

from softprompt.recipes.peak_memory import PeakMemory, _rss

KIB = 1024 // 4  # float32 elements in 1 KiB; every block is below glibc's mmap threshold


def _blocks(count: int, kib: int) -> list[torch.Tensor]:
    return [torch.ones(kib * KIB) for _ in range(count)]  # ones: every page is touched


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _rss(), reason="needs /proc")
def test_a_unit_that_reuses_memory_an_earlier_one_freed_still_reports_it():
    """Free every other 64 KiB block of 100 MiB (the kept ones stop malloc trimming the
    heap's top), then measure allocating 37.5 MiB in 16 KiB blocks: they land in the freed
    holes. Measured from the RSS with the holes still resident, it read 0.1 MiB; the
    start is now taken after the free pages go back to the OS (38 MiB)."""
    earlier = _blocks(1600, 64)
    kept = earlier[1::2]
    del earlier  # the even blocks: freed, but resident in malloc's arena
    with PeakMemory(torch.device("cpu")) as memory:
        again = _blocks(2400, 16)
    assert memory.used > 25 * 2**20, f"{memory.used / 2**20:.1f} MiB"
    del again, kept
