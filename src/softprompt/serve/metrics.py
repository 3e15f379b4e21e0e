"""Counters and histograms in Prometheus text format (no client library needed)."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


class Metrics:
    """Request, error, batch, queue-wait and latency figures of one server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.histograms: dict[str, Histogram] = {
            "softprompt_request_seconds": Histogram(LATENCY_BUCKETS),
            "softprompt_queue_wait_seconds": Histogram(LATENCY_BUCKETS),
            "softprompt_batch_rows": Histogram(SIZE_BUCKETS),
            "softprompt_batch_tasks": Histogram(SIZE_BUCKETS),
        }

    def count(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self._lock:
            self.counters[(name, tuple(sorted(labels.items())))] += value

    def observe(self, name: str, value: float) -> None:
        with self._lock:
            self.histograms[name].observe(value)

    def render(self, gauges: dict[str, float]) -> str:
        lines: list[str] = []
        with self._lock:
            for name in sorted({n for n, _ in self.counters}):
                lines.append(f"# TYPE {name} counter")
                for (n, labels), value in sorted(self.counters.items()):
                    if n == name:
                        lines.append(f"{name}{_labels(labels)} {value:g}")
            for name, h in self.histograms.items():
                lines.append(f"# TYPE {name} histogram")
                for bound, count in zip(h.buckets, h.counts, strict=True):
                    lines.append(f'{name}_bucket{{le="{bound:g}"}} {count}')
                lines.append(f'{name}_bucket{{le="+Inf"}} {h.n}')
                lines.append(f"{name}_sum {h.total:.6f}")
                lines.append(f"{name}_count {h.n}")
        for name, value in sorted(gauges.items()):
            lines += [f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v).replace(chr(34), "")}"' for k, v in labels)
    return "{" + inner + "}"
