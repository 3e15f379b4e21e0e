"""Counters and histograms in Prometheus text format (no client library needed).

Every family has a `# HELP` line and its true type: the prompt cache's hit, miss, eviction
and invalidation counts only grow, so they are counters although the server passes them
in with the gauges (the names are kept as dashboards know them)."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

HELP = {
    "softprompt_requests_total": "HTTP requests answered, by route and status",
    "softprompt_errors_total": "Error answers (4xx and 5xx), by status",
    "softprompt_internal_errors_total": "Unexpected errors answered with a 500",
    "softprompt_request_seconds": "Time to answer an HTTP request",
    "softprompt_queue_wait_seconds": "Time an input waited for its batch",
    "softprompt_batch_rows": "Inputs per batch run on the model",
    "softprompt_batch_tasks": "Distinct tasks per batch run on the model",
    "softprompt_cache_hits": "Prompt K/V cache lookups that found the prompt",
    "softprompt_cache_misses": "Prompt K/V cache lookups that computed the prompt",
    "softprompt_cache_evictions": "Prompts evicted from the K/V cache to stay in its limit",
    "softprompt_cache_invalidations": "Cached prompts dropped because their task changed",
    "softprompt_cache_bytes": "Bytes the prompt K/V cache holds",
    "softprompt_cache_limit_bytes": "The prompt K/V cache's limit in bytes (--cache-mb)",
    "softprompt_queue_waiting": "Inputs waiting for a batch now",
    "softprompt_tasks": "Tasks served now",
}
# values passed to render() with the gauges that only ever grow
COUNTERS = {
    "softprompt_cache_hits",
    "softprompt_cache_misses",
    "softprompt_cache_evictions",
    "softprompt_cache_invalidations",
}


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
                lines += _header(name, "counter")
                for (n, labels), value in sorted(self.counters.items()):
                    if n == name:
                        lines.append(f"{name}{_labels(labels)} {value:g}")
            for name, h in self.histograms.items():
                lines += _header(name, "histogram")
                for bound, count in zip(h.buckets, h.counts, strict=True):
                    lines.append(f'{name}_bucket{{le="{bound:g}"}} {count}')
                lines.append(f'{name}_bucket{{le="+Inf"}} {h.n}')
                lines.append(f"{name}_sum {h.total:.6f}")
                lines.append(f"{name}_count {h.n}")
        for name, value in sorted(gauges.items()):
            lines += [
                *_header(name, "counter" if name in COUNTERS else "gauge"),
                f"{name} {value:g}",
            ]
        return "\n".join(lines) + "\n"


def _header(name: str, kind: str) -> list[str]:
    return [f"# HELP {name} {HELP.get(name, name.replace('_', ' '))}", f"# TYPE {name} {kind}"]


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v).replace(chr(34), "")}"' for k, v in labels)
    return "{" + inner + "}"
