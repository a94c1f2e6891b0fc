"""RED metrics (rate, errors, duration) per tumbling event-time window and dimensions.

A metric is an accumulator with `add`, `merge` and `result`; `RedWindows` assigns spans to windows
by the time their response ended, closes windows once the watermark passes their end plus the
allowed lateness, and counts (and hands back) spans that arrive for a window already closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tracetap.model import Span, stable_id
from tracetap.sketch import DDSketch

_NS_PER_MS = 1_000_000


class RedKey(NamedTuple):
    """The dimensions of one RED series."""

    tap_side: str
    client_workload: str | None
    server_workload: str | None
    protocol: str
    endpoint: str


@dataclass(slots=True)
class RedAccumulator:
    request_count: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency: DDSketch = field(default_factory=DDSketch)
    max_ns: int = 0
    sum_ns: int = 0

    def add(self, span: Span) -> None:
        self.request_count += 1
        if span.error_class:
            self.errors[span.error_class] = self.errors.get(span.error_class, 0) + 1
        self.latency.add(span.duration_ns)
        self.max_ns = max(self.max_ns, span.duration_ns)
        self.sum_ns += span.duration_ns

    def merge(self, other: RedAccumulator) -> None:
        self.request_count += other.request_count
        for error, n in other.errors.items():
            self.errors[error] = self.errors.get(error, 0) + n
        self.latency.merge(other.latency)
        self.max_ns = max(self.max_ns, other.max_ns)
        self.sum_ns += other.sum_ns

    def result(self, key: RedKey, window_start_ns: int, window_ns: int) -> dict[str, Any]:
        """The RedMetric record."""
        def q(p: float) -> int:
            return int(round(self.latency.quantile(p) or 0))

        start_ms = window_start_ns // _NS_PER_MS
        return {
            "metric_id": stable_id("red", start_ms, *key), "window_start": start_ms, "window_end": start_ms + window_ns // _NS_PER_MS,
            "tap_side": key.tap_side, "client_workload": key.client_workload, "server_workload": key.server_workload,
            "protocol": key.protocol, "endpoint": key.endpoint, "request_count": self.request_count,
            "error_count": sum(self.errors.values()), "client_error_count": self.errors.get("CLIENT_ERROR", 0),
            "server_error_count": self.errors.get("SERVER_ERROR", 0), "timeout_count": self.errors.get("TIMEOUT", 0),
            "protocol_error_count": self.errors.get("PROTOCOL_ERROR", 0), "latency_p50_ns": q(0.5), "latency_p90_ns": q(0.9),
            "latency_p99_ns": q(0.99), "latency_max_ns": self.max_ns, "latency_sum_ns": self.sum_ns,
            "latency_sketch": self.latency.to_bytes(),
        }


def red_key(span: Span) -> RedKey:
    return RedKey(str(span.tap_side), span.client_workload, span.server_workload, span.protocol, span.endpoint or span.request_type or "?")


@dataclass(frozen=True, slots=True)
class WindowConfig:
    window_ns: int = 10_000_000_000
    allowed_lateness_ns: int = 5_000_000_000


class RedWindows:
    """Open windows of one key range; engines feed spans and watermarks, and emit what `add`/`advance` return."""

    def __init__(self, config: WindowConfig = WindowConfig()) -> None:
        self._config = config
        self._open: dict[tuple[int, RedKey], RedAccumulator] = {}
        self._closed_before_ns = 0  # windows ending at or before this have been emitted
        self.late = 0

    def add(self, span: Span) -> bool:
        """Count the span in its window; False (and counted as late) when that window was already emitted."""
        start = span.end_ns - span.end_ns % self._config.window_ns
        if start + self._config.window_ns <= self._closed_before_ns:
            self.late += 1
            return False
        key = (start, red_key(span))
        accumulator = self._open.get(key)
        if accumulator is None:
            accumulator = self._open[key] = RedAccumulator()
        accumulator.add(span)
        return True

    def advance(self, watermark_ns: int) -> list[dict[str, Any]]:
        """Emit every window whose end plus the allowed lateness the watermark has passed, in (start, key) order."""
        horizon = watermark_ns - self._config.allowed_lateness_ns
        due = sorted((k for k in self._open if k[0] + self._config.window_ns <= horizon), key=lambda k: (k[0], tuple(map(str, k[1]))))
        out = [self._open.pop(k).result(k[1], k[0], self._config.window_ns) for k in due]
        self._closed_before_ns = max(self._closed_before_ns, horizon)
        return out
