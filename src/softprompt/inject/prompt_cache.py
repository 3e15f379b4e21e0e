"""Each task's prompt keys/values, computed once and kept in an LRU bounded in bytes.

On a causal decoder a front prompt never sees the input, so its per-layer K/V (with BOS
and any prefix-tuning K/V) are the same for every request of the task. They are computed
at batch 1 the first time a task is asked for and reused until evicted (least recently
used first, to stay under `max_bytes`) or invalidated (its prompt was replaced or
removed). Keys carry the task's version and checksum, and `retire` marks a task's old
keys so a batch still in flight on a replaced prompt cannot put them back.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

Key = tuple[str, int, str]  # (task, version, sha256)
LayerKV = list[tuple[torch.Tensor, torch.Tensor]]  # L x (keys, values), each (1, kvh, w, hd)


@dataclass
class CachedKV:
    kv: LayerKV
    width: int  # prefix slots: K/V prefix + BOS + virtual tokens
    nbytes: int


def kv_bytes(kv: LayerKV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


class PromptKVCache:
    """Thread-safe LRU of per-task prompt K/V, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Key, CachedKV] = OrderedDict()
        self._live: dict[str, Key | None] = {}  # task -> the key it serves (None: removed)
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = self.invalidations = 0

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(item.nbytes for item in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Key) -> bool:
        return key in self._items

    def get(self, key: Key) -> CachedKV | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: Key, kv: LayerKV, width: int) -> bool:
        """Keep `kv` unless it is larger than the whole bound or its task moved on."""
        item = CachedKV(kv, width, kv_bytes(kv))
        with self._lock:
            stale = key[0] in self._live and self._live[key[0]] != key
            if stale or item.nbytes > self.max_bytes:
                return False
            self._items[key] = item
            self._items.move_to_end(key)
            while sum(i.nbytes for i in self._items.values()) > self.max_bytes:
                self._items.popitem(last=False)
                self.evictions += 1
            return True

    def retire(self, task: str, live: Key | None) -> None:
        """The task now serves `live` (None: removed): drop every other key of the task."""
        with self._lock:
            self._live[task] = live
            for key in [k for k in self._items if k[0] == task and k != live]:
                del self._items[key]
                self.invalidations += 1
