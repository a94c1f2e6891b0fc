"""The pipeline's two keyed stages, which every engine hosts the same way:

1. `FlowStage`, one per flow id (the raw topics' key, so no repartition): one flow's socket data and
   packet summaries become spans at the four tap points.
2. `TraceStage`, one for the whole pipeline: spans are grouped into connected traces (the links of
   `tracing.link_spans`), linked, tagged with workloads, joined into path records, counted into RED,
   network and DNS windows, and read by the alert rules. Call chains cross every key a span has, so
   this stage sees all spans; it is the one stage that does not scale out.

A stage is a plain object: an engine keeps it in keyed state as `to_state()` (JSON-ready data, never a
pickle: state travels through topics), feeds it records in order and calls `advance` on a watermark.
`applied` lets an engine skip records a recovered state already holds. A record method that raises may
have changed the stage: the engine puts back the state from before the record (streams/edge.py).
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

from tracetap.alerts import AlertConfig, DnsAccumulator, RegressionTracker, dns_storm, failed_dependency, slow_request
from tracetap.assembly import AssemblyConfig, SocketAssembler
from tracetap.config import StreamSettings
from tracetap.errors import InvalidEvent, UndecodableState
from tracetap.eventtime import EngineClock, PartitionClocks
from tracetap.metrics import NetworkKey, NetworkWindows, RedKey, RedWindows, TumblingWindows, WindowConfig
from tracetap.model import Span, SocketData, TapSide, span_from_state, span_to_state
from tracetap.nic import FlowPacketAssembler, NicConfig, check_packet
from tracetap.paths import PathState, join_key, share_workloads
from tracetap.tracing import link_spans
from tracetap.workloads import WorkloadIndex


MAX_EVENT_TIME_NS = 2**62  # 2116: later times are refused, so that a time plus a timeout stays within a long


@dataclass(frozen=True, slots=True)
class StageConfig:
    assembly: AssemblyConfig = AssemblyConfig()
    nic: NicConfig = NicConfig()
    windows: WindowConfig = WindowConfig()
    alerts: AlertConfig = AlertConfig()
    max_out_of_order_ns: int = 2_000_000_000
    allowed_lateness_ns: int = 5_000_000_000
    trace_gap_ns: int = 5_000_000_000  # a trace is complete once the watermark is this far past its last span's end
    idle_state_ns: int = 120_000_000_000  # an assembler with nothing open and no input for this long is forgotten

    @property
    def flush_horizon_ns(self) -> int:
        """How far past the latest event time an idle flush moves the watermark: every open request then times out."""
        return self.assembly.request_timeout_ns + self.nic.request_timeout_ns

    @classmethod
    def from_settings(cls, streams: StreamSettings) -> StageConfig:
        """The core's tunables of a `[streams]` section (seconds and milliseconds there, nanoseconds here)."""
        def ns(seconds: float) -> int:
            return int(seconds * 1_000_000_000)

        timeout_ns = ns(streams.request_timeout_s)
        return cls(assembly=AssemblyConfig(request_timeout_ns=timeout_ns), nic=replace(NicConfig(), request_timeout_ns=timeout_ns),
                   windows=WindowConfig(window_ns=ns(streams.window_s), allowed_lateness_ns=ns(streams.allowed_lateness_s)),
                   alerts=AlertConfig(slow_request_ns=int(streams.slow_ms * 1_000_000)),
                   max_out_of_order_ns=ns(streams.max_out_of_order_s), allowed_lateness_ns=ns(streams.allowed_lateness_s),
                   trace_gap_ns=ns(streams.trace_gap_s))


# stage 1 ----------------------------------------------------------------------------------------------
@dataclass(slots=True)
class FlowStage:
    """The assemblers of one flow: one per socket (c-p, s-p) and one per NIC tap point (c, s)."""

    config: StageConfig = field(default_factory=StageConfig)
    sockets: dict[str, SocketAssembler] = field(default_factory=dict)
    nics: dict[str, FlowPacketAssembler] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)  # "topic/partition" -> the last offset this state holds
    last_seen_ns: dict[str, int] = field(default_factory=dict)  # assembler key -> its latest event time
    closing: dict[str, int] = field(default_factory=dict)  # socket key -> its CLOSE's time, applied at that watermark

    @staticmethod
    def event_time_ns(kind: str, record: dict[str, Any]) -> int:
        """A raw record's event time (socket data: the syscall's exit); InvalidEvent outside 1970..2116, which
        no capture produces and which would overflow the state's 64-bit times."""
        time_ns = record["end_time"] if kind == "socket_data" else record["time"]
        if not 0 <= time_ns < MAX_EVENT_TIME_NS:
            raise InvalidEvent(f"event time {time_ns} is outside 0..2**62 ns")
        return time_ns

    def socket_data(self, record: dict[str, Any]) -> list[Span]:
        event = SocketData.from_record(record)
        assembler = self.sockets.get(event.socket_key)
        if assembler is None:
            assembler = self.sockets[event.socket_key] = SocketAssembler(self.config.assembly)
        self.last_seen_ns[event.socket_key] = event.end_ns
        return assembler.add(event)

    def packet(self, record: dict[str, Any]) -> list[Span]:
        self.event_time_ns("packet", record)
        check_packet(record)
        tap = f"{record['host']}|{record['interface']}|{record['tap_point']}"
        assembler = self.nics.get(tap)
        if assembler is None:
            assembler = self.nics[tap] = FlowPacketAssembler(self.config.nic)
        self.last_seen_ns[tap] = record["time"]
        return assembler.add(record)

    def lifecycle(self, record: dict[str, Any]) -> list[Span]:
        """A CLOSE ends the socket's assembler once the watermark passes its time (`advance`): lifecycle events
        come on their own topic, so the socket's last data may still be on its way when the CLOSE arrives.
        Requests still open then end flagged as cut off."""
        self.event_time_ns("lifecycle", record)
        if record["kind"] != "CLOSE":
            return []
        self.closing[f"{record['host']}|{record['pid']}|{record['socket_id']}"] = record["time"]  # its data may come later still
        return []

    def advance(self, watermark_ns: int) -> list[Span]:
        """Closes and timeouts due at this watermark; assemblers with nothing open and no input for
        `idle_state_ns` are forgotten (UDP sockets and NIC taps never see a close)."""
        out: list[Span] = []
        for key, time_ns in sorted(self.closing.items(), key=lambda item: (item[1], item[0])):
            if time_ns <= watermark_ns:
                del self.closing[key]
                assembler = self.sockets.pop(key, None)
                self.last_seen_ns.pop(key, None)
                if assembler is not None:
                    out += assembler.close(time_ns)
        for assemblers in (self.sockets, self.nics):
            for key in sorted(assemblers):
                out += assemblers[key].expire(watermark_ns)
                if assemblers[key].idle and self.last_seen_ns.get(key, 0) + self.config.idle_state_ns <= watermark_ns:
                    del assemblers[key]
                    self.last_seen_ns.pop(key, None)
        return out

    @property
    def empty(self) -> bool:
        return not self.sockets and not self.nics and not self.closing

    @property
    def latest_event_ns(self) -> int:
        """The latest event time an assembler of this flow has seen (0: none)."""
        return max(self.last_seen_ns.values(), default=0)

    def to_state(self) -> dict[str, Any]:
        """JSON-ready data, sharing nothing mutable with the stage (so it is a snapshot too); the configuration
        is not part of it: the engine passes its own to `from_state`."""
        return {"sockets": {k: a.to_state() for k, a in self.sockets.items()}, "nics": {k: a.to_state() for k, a in self.nics.items()},
                "applied": dict(self.applied), "last_seen_ns": dict(self.last_seen_ns), "closing": dict(self.closing)}

    @classmethod
    def from_state(cls, state: dict[str, Any], config: StageConfig) -> FlowStage:
        """The stage of `to_state`; UndecodableState when the data is not one."""
        try:
            return cls(config, {k: SocketAssembler.from_state(a, config.assembly) for k, a in state["sockets"].items()},
                       {k: FlowPacketAssembler.from_state(a, config.nic) for k, a in state["nics"].items()},
                       state_ints(state["applied"]), state_ints(state["last_seen_ns"]), state_ints(state["closing"]))
        except UndecodableState:
            raise
        except Exception as exc:  # malformed data fails in many ways (a missing key, a wrong shape); all mean the same
            raise UndecodableState(f"not a flow stage's state: {type(exc).__name__}: {exc}") from None

    def next_deadline_ns(self) -> int | None:
        """The lowest watermark at which `advance` has work: a timeout, a response's linger, or forgetting an idle
        assembler. An engine with per-key timers (Flink) sets one here; one that advances every key each batch
        (Faust) needs none."""
        deadlines = list(self.closing.values())
        for assemblers in (self.sockets, self.nics):
            for key, assembler in assemblers.items():
                due = assembler.next_deadline_ns
                if due is None:
                    due = self.last_seen_ns.get(key, 0) + self.config.idle_state_ns
                deadlines.append(due)
        return min(deadlines, default=None)


# stage 2 ----------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Emitted:
    """What one `TraceStage.advance` produced, as the records of the output topics."""

    spans: list[dict[str, Any]] = field(default_factory=list)
    paths: list[dict[str, Any]] = field(default_factory=list)
    red: list[dict[str, Any]] = field(default_factory=list)
    network: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.spans) + len(self.paths) + len(self.red) + len(self.network) + len(self.alerts)


@dataclass(slots=True)
class TraceCounters:
    spans_in: int = 0
    duplicate_spans: int = 0  # replays after a restart upstream: dropped by span id
    duplicate_lifecycle: int = 0  # the same for lifecycle events, by their identity
    late_spans: int = 0  # beyond the allowed lateness: the engine dead-letters them
    late_lifecycle: int = 0
    traces: int = 0


def link_keys(span: Span) -> list[tuple[Any, ...]]:
    """What ties a span to others (the evidence `tracing.link_spans` uses): its path, its thread trace id
    within its process, and the trace headers it carried within its process."""
    keys: list[tuple[Any, ...]] = []
    path = join_key(span)
    if path is not None:
        keys.append(("path", *path))
    if span.tap_side in (TapSide.CLIENT_PROCESS, TapSide.SERVER_PROCESS):
        if span.syscall_trace_id_request:
            keys.append(("thread", span.host, span.pid, span.syscall_trace_id_request))
        for name, value in sorted(span.trace_headers.items()):
            keys.append(("header", span.host, span.pid, name, value))
    return keys


class PendingTraces:
    """Spans waiting for their trace, kept as connected groups while they come (union-find over their link
    keys), each group with its last end in a heap: completing the traces at a horizon costs the size of what
    it emits, not of everything that waits. A group leaves whole, so the components are those of the spans
    still waiting, as if they were grouped from scratch.

    With `max_group_ns`, a span joins a group through a shared key only if it starts within that long of the
    group's first start; else the key starts a new group from it. A value that never changes (a client that
    sends one `traceparent` or `x-request-id` with every request) would otherwise tie all its traffic into
    one group that grows as long as the traffic flows and never completes."""

    __slots__ = ("spans", "_seq", "_next_seq", "_parent", "_members", "_keys", "_owner", "_end", "_first", "_by_end", "_span_ends",
                 "_link_keys", "_max_group_ns")

    def __init__(self, keys: Callable[[Span], list[tuple[Any, ...]]] = link_keys, max_group_ns: int | None = None) -> None:
        self._link_keys = keys  # what ties a span to others
        self._max_group_ns = max_group_ns
        self.spans: dict[str, Span] = {}  # span id -> span, in arrival order
        self._seq: dict[str, int] = {}  # span id -> arrival number: a trace lists its spans in arrival order
        self._next_seq = 0
        self._parent: dict[str, str] = {}
        self._members: dict[str, list[str]] = {}  # root -> its group's span ids
        self._keys: dict[str, list[tuple[Any, ...]]] = {}  # root -> the link keys its group owns
        self._owner: dict[tuple[Any, ...], str] = {}  # link key -> a waiting span that has it
        self._end: dict[str, int] = {}  # root -> its group's last end
        self._first: dict[str, int] = {}  # root -> its group's first start
        self._by_end: list[tuple[int, str]] = []  # heap of (end, root); stale entries are skipped when popped
        self._span_ends: list[tuple[int, str]] = []  # heap of (end, span id), for the earliest waiting end

    def __len__(self) -> int:
        return len(self.spans)

    def __contains__(self, span_id: str) -> bool:
        return span_id in self.spans

    def add(self, span: Span) -> None:
        span_id = span.span_id
        self.spans[span_id] = span
        self._seq[span_id] = self._next_seq
        self._next_seq += 1
        self._parent[span_id] = span_id
        self._members[span_id] = [span_id]
        self._keys[span_id] = []
        self._end[span_id] = span.end_ns
        self._first[span_id] = span.start_ns
        heapq.heappush(self._span_ends, (span.end_ns, span_id))
        root = span_id
        for key in self._link_keys(span):
            other = self._owner.get(key)
            if other is not None and self._max_group_ns is not None and span.start_ns - self._first[self._find(other)] > self._max_group_ns:
                other = None  # that group started too long before: the key ties later spans to this one
            if other is None:
                self._owner[key] = span_id
                self._keys[root].append(key)
            else:
                root = self._union(root, self._find(other))
        heapq.heappush(self._by_end, (self._end[root], root))

    def earliest_end(self) -> int | None:
        """The earliest end of a waiting span (None: none waits)."""
        ends = self._span_ends
        while ends and ends[0][1] not in self.spans:
            heapq.heappop(ends)
        return ends[0][0] if ends else None

    def complete(self, horizon: int | None) -> list[list[Span]]:
        """Remove and return the groups whose last end is at or before the horizon (all of them for None),
        in the order of their first span."""
        if horizon is None:
            roots = list(self._members)
            self._by_end.clear()
        else:
            roots, seen = [], set()
            while self._by_end and self._by_end[0][0] <= horizon:
                end, root = heapq.heappop(self._by_end)
                if self._end.get(root) == end and root not in seen:  # else merged, or grown since it was pushed
                    seen.add(root)
                    roots.append(root)
        done = [self._remove(root) for root in roots]
        return sorted(done, key=lambda g: min((s.start_ns, s.span_id) for s in g))

    def _find(self, x: str) -> str:
        parent = self._parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def _union(self, a: str, b: str) -> str:
        if a == b:
            return a
        if len(self._members[a]) < len(self._members[b]):
            a, b = b, a
        self._parent[b] = a
        self._members[a] += self._members.pop(b)
        self._keys[a] += self._keys.pop(b)
        self._end[a] = max(self._end[a], self._end.pop(b))
        self._first[a] = min(self._first[a], self._first.pop(b))
        return a

    def _remove(self, root: str) -> list[Span]:
        members = sorted(self._members.pop(root), key=self._seq.__getitem__)
        for key in self._keys.pop(root):
            owner = self._owner.get(key)
            if owner is not None and self._find(owner) == root:  # else another group owns the key now (or none does)
                del self._owner[key]
        del self._end[root], self._first[root]
        group = []
        for span_id in members:
            group.append(self.spans.pop(span_id))
            del self._seq[span_id], self._parent[span_id]
        return group


@dataclass(slots=True)
class TraceStage:
    config: StageConfig = field(default_factory=StageConfig)
    clock: PartitionClocks | EngineClock | None = None  # None: per-partition clocks of the sources named in `span`
    workloads: WorkloadIndex = field(default_factory=WorkloadIndex)
    pending: PendingTraces = field(default_factory=PendingTraces)  # spans not yet in a complete trace
    emitted: dict[str, int] = field(default_factory=dict)  # span id -> end, remembered to drop replays
    failed_connects: list[dict[str, Any]] = field(default_factory=list)
    lifecycle_seen: dict[tuple[Any, ...], int] = field(default_factory=dict)  # identity -> time, remembered to drop replays
    red: RedWindows = field(init=False)
    network: NetworkWindows = field(init=False)
    dns: TumblingWindows = field(init=False)
    regressions: RegressionTracker = field(init=False)
    counters: TraceCounters = field(default_factory=TraceCounters)
    applied: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.clock is None:
            self.clock = PartitionClocks(self.config.max_out_of_order_ns, self.config.allowed_lateness_ns)
        self.red = RedWindows(self.config.windows)
        self.network = NetworkWindows(self.config.windows)
        self.dns = TumblingWindows(self.config.windows, DnsAccumulator)
        self.regressions = RegressionTracker(self.config.alerts)

    # state ------------------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """JSON-ready data (without the configuration, as FlowStage's)."""
        assert self.clock is not None
        return {"clock": self.clock.to_state(), "workloads": self.workloads.to_state(),
                "pending": [span_to_state(s) for s in self.pending.spans.values()], "emitted": dict(self.emitted),
                "failed_connects": list(self.failed_connects), "lifecycle_seen": [[*k, t] for k, t in self.lifecycle_seen.items()],
                "red": self.red.to_state(), "network": self.network.to_state(), "dns": self.dns.to_state(),
                "regressions": self.regressions.to_state(), "counters": asdict(self.counters), "applied": dict(self.applied)}

    @classmethod
    def from_state(cls, state: dict[str, Any], config: StageConfig) -> TraceStage:
        """The stage of `to_state`; UndecodableState when the data is not one."""
        try:
            clock_state = state["clock"]
            if "engine" in clock_state:
                clock: PartitionClocks | EngineClock = EngineClock(config.allowed_lateness_ns)
            else:
                clock = PartitionClocks(config.max_out_of_order_ns, config.allowed_lateness_ns)
            clock.load_state(clock_state)
            stage = cls(config, clock=clock)
            stage.workloads.load_state(state["workloads"])
            for span in map(span_from_state, state["pending"]):
                stage.pending.add(span)
            stage.emitted = state_ints(state["emitted"])
            stage.failed_connects = list(state["failed_connects"])
            stage.lifecycle_seen = {tuple(entry[:-1]): entry[-1] for entry in state["lifecycle_seen"]}
            stage.red.load_state(state["red"], RedKey._make)
            stage.network.load_state(state["network"], NetworkKey._make)
            stage.dns.load_state(state["dns"])
            stage.regressions.load_state(state["regressions"])
            stage.counters = TraceCounters(**state["counters"])
            stage.applied = state_ints(state["applied"])
            return stage
        except UndecodableState:
            raise
        except Exception as exc:
            raise UndecodableState(f"not a trace stage's state: {type(exc).__name__}: {exc}") from None

    # what an engine reads --------------------------------------------------------------------------------
    @property
    def watermark_ns(self) -> int:
        return self.clock.watermark_ns

    def engine_watermark(self, watermark_ns: int) -> None:
        """The engine's watermark, for a stage whose clock is an EngineClock (Flink's); it never goes back."""
        self.clock.watermark_ns = max(self.clock.watermark_ns, watermark_ns)

    @property
    def has_open_work(self) -> bool:
        """Spans waiting for their trace, or windows not closed yet: an idle flush has something to emit."""
        return bool(self.pending or len(self.red) or len(self.network) or len(self.dns))

    @property
    def waiting_spans(self) -> int:
        return len(self.pending)

    @property
    def open_windows(self) -> int:
        return len(self.red)

    # input ------------------------------------------------------------------------------------------
    def resource(self, resource_id: str, record: dict[str, Any] | None) -> None:
        self.workloads.apply(resource_id, record)

    def span(self, span: Span, source: str | None) -> bool:
        """Take a span from stage 1; `source` is the input partition whose record completed it (None for a
        timeout, which the watermark made). False when it is late beyond the allowed lateness (route it)."""
        self.counters.spans_in += 1
        if span.span_id in self.pending or span.span_id in self.emitted:
            self.counters.duplicate_spans += 1
            return True
        on_time = (self.clock.observe(source, span.end_ns) if source is not None
                   else span.end_ns >= self.clock.watermark_ns - self.config.allowed_lateness_ns)
        on_time = on_time and self.red.accepts(span.end_ns)  # what is emitted is counted: its window must be open
        if not on_time:
            self.counters.late_spans += 1
            return False
        self.pending.add(span)
        return True

    def lifecycle(self, record: dict[str, Any], source: str) -> bool:
        """Count a lifecycle event into the network windows (once: an upstream restart may replay it)."""
        identity = (record["host"], record["time"], record["kind"], record["pid"], record["socket_id"], record["local_ip"],
                    record["local_port"], record["remote_ip"], record["remote_port"])
        if identity in self.lifecycle_seen:
            self.counters.duplicate_lifecycle += 1
            return True
        if not self.clock.observe(source, record["time"]):
            self.counters.late_lifecycle += 1
            return False
        self.network.add_event(record, self.workloads.pair(record))  # before it is remembered: the one step that may raise
        self.lifecycle_seen[identity] = record["time"]
        if record["kind"] == "CONNECT_FAILED":
            self.failed_connects.append(record)
        return True

    # output -----------------------------------------------------------------------------------------
    def advance(self, final: bool = False) -> Emitted:
        """Emit every trace complete at the watermark (all of them when `final`), then the closed windows."""
        watermark = self.clock.watermark_ns
        horizon = watermark - self.config.trace_gap_ns
        out = Emitted()
        for trace in self.pending.complete(None if final else horizon):
            self._emit_trace(trace, out)
        if final:  # every window: a span a timeout made (no partition's clock saw it) may end past the latest time seen
            latest = max([self.clock.max_seen_ns] + [w.last_start_ns for w in (self.red, self.network, self.dns) if w.last_start_ns is not None])
            window_watermark = latest + self.config.windows.window_ns + self.config.windows.allowed_lateness_ns
        else:  # a window stays open while a waiting trace may still add a span to it
            earliest = self.pending.earliest_end()
            window_watermark = horizon if earliest is None else min(horizon, earliest)
        out.red += self.red.advance(window_watermark)
        out.network += self.network.advance(window_watermark)
        out.alerts += dns_storm(self.dns.advance(window_watermark), self.config.alerts)
        for record in out.red:
            alert = self.regressions.check(record)
            if alert is not None:
                out.alerts.append(alert)
        forget = horizon - 2 * self.config.trace_gap_ns - self.config.allowed_lateness_ns
        self.emitted = {k: end for k, end in self.emitted.items() if end >= forget}
        self.failed_connects = [e for e in self.failed_connects if e["time"] >= forget]
        self.lifecycle_seen = {k: t for k, t in self.lifecycle_seen.items() if t >= forget}
        return out

    def _emit_trace(self, trace: list[Span], out: Emitted) -> None:
        self.counters.traces += 1
        trace = [self.workloads.tag(replace(s)) for s in trace]
        share_workloads(trace)
        trace = link_spans(trace)
        paths: dict[tuple[str, str], PathState] = {}
        for span in trace:
            self.emitted[span.span_id] = span.end_ns
            out.spans.append(span.to_record())
            self.red.add_span(span)
            if span.protocol == "DNS" and span.tap_side is TapSide.CLIENT_PROCESS:
                self.dns.add(span.end_ns, (span.client_workload or span.client_ip,), span)
            key = join_key(span)
            if key is not None:
                state = paths.get(key)
                if state is None:
                    state = paths[key] = PathState(key, span.start_ns)
                state.add(span)
        records = {key: paths[key].record() for key in sorted(paths)}
        out.paths += records.values()
        for alert in (slow_request(trace, records, self.config.alerts), failed_dependency(trace, self.failed_connects)):
            if alert is not None:
                out.alerts.append(alert)


def state_ints(mapping: dict[str, Any]) -> dict[str, int]:
    """A str -> int map of decoded state, checked (an offset or a time the engine compares)."""
    if not all(type(k) is str and type(v) is int for k, v in mapping.items()):
        raise UndecodableState("a map of state holds a key or value of the wrong type")
    return dict(mapping)
