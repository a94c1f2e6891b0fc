"""RED metrics (rate, errors, duration) per tumbling event-time window and dimensions.

A metric is an accumulator with `add`, `merge` and `result`; `TumblingWindows` holds one per window and
key, closes windows once the watermark passes their end plus the allowed lateness, and counts what
arrives for a window already closed. RED counts spans; network metrics count lifecycle events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

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
    estimated_requests: float = 0.0  # each span counted 1 / its sample ratio: what the agents' shedding left out
    estimated_errors: float = 0.0

    def add(self, span: Span) -> None:
        self.latency.add(span.duration_ns)  # first: the one step that refuses a value (a negative duration)
        self.request_count += 1
        weight = 1.0 / span.sample_ratio
        self.estimated_requests += weight
        if span.error_class:
            self.errors[span.error_class] = self.errors.get(span.error_class, 0) + 1
            self.estimated_errors += weight
        self.max_ns = max(self.max_ns, span.duration_ns)
        self.sum_ns += span.duration_ns

    def merge(self, other: RedAccumulator) -> None:
        self.request_count += other.request_count
        for error, n in other.errors.items():
            self.errors[error] = self.errors.get(error, 0) + n
        self.latency.merge(other.latency)
        self.max_ns = max(self.max_ns, other.max_ns)
        self.sum_ns += other.sum_ns
        self.estimated_requests += other.estimated_requests
        self.estimated_errors += other.estimated_errors

    def to_state(self) -> list[Any]:
        return [self.request_count, dict(self.errors), self.latency.to_state(), self.max_ns, self.sum_ns, self.estimated_requests,
                self.estimated_errors]

    @classmethod
    def from_state(cls, state: list[Any]) -> RedAccumulator:
        count, errors, latency, max_ns, sum_ns, *estimated = state
        errors = dict(errors)
        if not estimated:  # state from before sampling: every span counted once
            estimated = [float(count), float(sum(errors.values()))]
        return cls(count, errors, DDSketch.from_state(latency), max_ns, sum_ns, *estimated)

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
            # rounded: a sum of floats depends on the order the engines merged it in
            "estimated_request_count": round(self.estimated_requests, 3), "estimated_error_count": round(self.estimated_errors, 3),
        }


def red_key(span: Span) -> RedKey:
    return RedKey(str(span.tap_side), span.client_workload, span.server_workload, span.protocol, span.endpoint or span.request_type or "?")


@dataclass(frozen=True, slots=True)
class WindowConfig:
    window_ns: int = 10_000_000_000
    allowed_lateness_ns: int = 5_000_000_000


class _Accumulator(Protocol):
    def add(self, item: Any) -> None: ...

    def to_state(self) -> Any: ...

    def merge(self, other: Any) -> None: ...

    def result(self, key: Any, window_start_ns: int, window_ns: int) -> dict[str, Any]: ...


class TumblingWindows:
    """Event-time tumbling windows of accumulators, per key. `add` puts an item in the window of its time
    (False, and counted as late, when that window was already emitted); `advance` emits every window whose
    end plus the allowed lateness the watermark has passed, in (start, key) order."""

    def __init__(self, config: WindowConfig, new_accumulator: Callable[[], _Accumulator]) -> None:
        self._config = config
        self._new = new_accumulator
        self._open: dict[tuple[int, tuple[Any, ...]], _Accumulator] = {}
        self._closed_before_ns = 0  # windows ending at or before this have been emitted
        self.late = 0

    def accepts(self, time_ns: int) -> bool:
        """Whether the window of this time is still open (not yet emitted)."""
        return time_ns - time_ns % self._config.window_ns + self._config.window_ns > self._closed_before_ns

    def add(self, time_ns: int, key: tuple[Any, ...], item: Any) -> bool:
        if not self.accepts(time_ns):
            self.late += 1
            return False
        start = time_ns - time_ns % self._config.window_ns
        accumulator = self._open.get((start, key))
        if accumulator is None:  # kept only once the item is in: a failed add leaves no empty window behind
            accumulator = self._new()
            accumulator.add(item)
            self._open[(start, key)] = accumulator
        else:
            accumulator.add(item)
        return True

    def advance(self, watermark_ns: int) -> list[dict[str, Any]]:
        horizon = watermark_ns - self._config.allowed_lateness_ns
        due = sorted((k for k in self._open if k[0] + self._config.window_ns <= horizon), key=lambda k: (k[0], tuple(map(str, k[1]))))
        self._closed_before_ns = max(self._closed_before_ns, horizon)
        return [self._open.pop(k).result(k[1], k[0], self._config.window_ns) for k in due]

    def __len__(self) -> int:
        return len(self._open)

    @property
    def first_start_ns(self) -> int | None:
        """The start of the earliest open window (None: none is open)."""
        return min((start for start, _ in self._open), default=None)

    @property
    def last_start_ns(self) -> int | None:
        """The start of the latest open window (None: none is open)."""
        return max((start for start, _ in self._open), default=None)

    def to_state(self) -> list[Any]:
        """JSON-ready data: the open windows (start, key, accumulator) and what was emitted."""
        return [[[start, list(key), accumulator.to_state()] for (start, key), accumulator in self._open.items()],
                self._closed_before_ns, self.late]

    def load_state(self, state: list[Any], make_key: Callable[[list[Any]], tuple[Any, ...]] = tuple) -> None:
        """Take the windows of `to_state` (into a new instance; `make_key` builds a key from its list)."""
        windows, self._closed_before_ns, self.late = state
        restore = getattr(self._new, "from_state")
        self._open = {(start, make_key(key)): restore(accumulator) for start, key, accumulator in windows}


class RedWindows(TumblingWindows):
    """RED per window and RedKey; a span counts in the window its response ended in."""

    def __init__(self, config: WindowConfig = WindowConfig()) -> None:
        super().__init__(config, RedAccumulator)

    def add_span(self, span: Span) -> bool:
        return self.add(span.end_ns, red_key(span), span)


class NetworkKey(NamedTuple):
    l4_protocol: str
    client_ip: str
    server_ip: str
    server_port: int
    client_workload: str | None
    server_workload: str | None


@dataclass(slots=True)
class NetworkAccumulator:
    """Per client/server pair, from SocketLifecycleEvent records. Bytes come from the client socket's close
    (a traced server socket's close would count the same bytes again); the rest from both sides."""

    bytes_client_to_server: int = 0
    bytes_server_to_client: int = 0
    connects: int = 0
    failed_connects: int = 0
    retransmits: int = 0
    resets: int = 0
    rtt_samples: int = 0
    rtt_sum_ns: int = 0
    rtt_max_ns: int = 0

    def to_state(self) -> list[int]:
        return [self.bytes_client_to_server, self.bytes_server_to_client, self.connects, self.failed_connects, self.retransmits,
                self.resets, self.rtt_samples, self.rtt_sum_ns, self.rtt_max_ns]

    @classmethod
    def from_state(cls, state: list[int]) -> NetworkAccumulator:
        return cls(*state)

    def add(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "CONNECT":
            self.connects += 1
        elif kind == "CONNECT_FAILED":
            self.failed_connects += 1
        elif kind == "RETRANSMIT":
            self.retransmits += 1
        elif kind in ("RESET_SENT", "RESET_RECEIVED"):
            self.resets += 1
        elif kind == "RTT_SAMPLE" and event["srtt_us"] is not None:  # new values first: a bad one changes nothing
            rtt_ns = event["srtt_us"] * 1000
            total, peak = self.rtt_sum_ns + rtt_ns, max(self.rtt_max_ns, rtt_ns)
            self.rtt_samples, self.rtt_sum_ns, self.rtt_max_ns = self.rtt_samples + 1, total, peak
        elif kind == "CLOSE" and event["role"] == "CLIENT":
            sent = self.bytes_client_to_server + (event["bytes_sent"] or 0)
            self.bytes_server_to_client += event["bytes_received"] or 0
            self.bytes_client_to_server = sent

    def merge(self, other: NetworkAccumulator) -> None:
        for name in ("bytes_client_to_server", "bytes_server_to_client", "connects", "failed_connects", "retransmits", "resets",
                     "rtt_samples", "rtt_sum_ns"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.rtt_max_ns = max(self.rtt_max_ns, other.rtt_max_ns)

    def result(self, key: NetworkKey, window_start_ns: int, window_ns: int) -> dict[str, Any]:
        start_ms = window_start_ns // _NS_PER_MS
        return {
            "metric_id": stable_id("net", start_ms, *key), "window_start": start_ms, "window_end": start_ms + window_ns // _NS_PER_MS,
            **key._asdict(), "bytes_client_to_server": self.bytes_client_to_server, "bytes_server_to_client": self.bytes_server_to_client,
            "connects": self.connects, "failed_connects": self.failed_connects, "retransmits": self.retransmits, "resets": self.resets,
            "rtt_samples": self.rtt_samples, "rtt_mean_ns": self.rtt_sum_ns // self.rtt_samples if self.rtt_samples else None,
            "rtt_max_ns": self.rtt_max_ns if self.rtt_samples else None,
        }


def local_is_client(event: dict[str, Any]) -> bool:
    """Which side of a lifecycle event the local socket is: by role, else the lower port is the server's."""
    return event["role"] == "CLIENT" or (event["role"] == "UNKNOWN" and event["local_port"] > event["remote_port"])


def network_key(event: dict[str, Any], workloads: tuple[str | None, str | None] = (None, None)) -> NetworkKey:
    """Client and server sides of a lifecycle event, and their workloads (client's first)."""
    if local_is_client(event):
        client, server, port = event["local_ip"], event["remote_ip"], event["remote_port"]
    else:
        client, server, port = event["remote_ip"], event["local_ip"], event["local_port"]
    return NetworkKey(event["l4_protocol"], client, server, port, *workloads)


class NetworkWindows(TumblingWindows):
    def __init__(self, config: WindowConfig = WindowConfig()) -> None:
        super().__init__(config, NetworkAccumulator)

    def add_event(self, event: dict[str, Any], workloads: tuple[str | None, str | None] = (None, None)) -> bool:
        return self.add(event["time"], network_key(event, workloads), event)
