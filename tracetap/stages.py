"""The pipeline's first keyed stage, which every engine hosts the same way, and what the later ones share:

- `FlowStage`, one per flow id (the raw topics' key, so no repartition): one flow's socket data and
  packet summaries become spans at the four tap points. The stages after it are keyed by conversation,
  process and metric series (tracetap/keyed.py; run together in one process by tracetap/pipeline.py).
- `StageConfig`, every stage's settings; `Emitted`, what an advance produces for the output topics;
  `PendingTraces`, spans grouped by what links them while they wait for their trace to complete.

A stage is a plain object: an engine keeps it in keyed state as `to_state()` (JSON-ready data, never a
pickle: state travels through topics), feeds it records in order and calls `advance` on a watermark.
`applied` lets an engine skip records a recovered state already holds. A record method that raises may
have changed the stage: the engine puts back the state from before the record (streams/edge.py).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from tracetap.alerts import AlertConfig
from tracetap.assembly import AssemblyConfig, SocketAssembler
from tracetap.config import StreamSettings
from tracetap.errors import InvalidEvent, UndecodableState
from tracetap.metrics import WindowConfig
from tracetap.model import Span, SocketData, TapSide
from tracetap.nic import FlowPacketAssembler, FlowPayloadAssembler, NicConfig, check_packet
from tracetap.paths import join_key


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
    """The assemblers of one flow: one per socket (c-p, s-p) and one per NIC tap point (c, s). Spans an agent
    already assembled on its node (`span`) pass through. The agents run this stage too, on the node (producers/collector.py)."""

    config: StageConfig = field(default_factory=StageConfig)
    sockets: dict[str, SocketAssembler] = field(default_factory=dict)
    nics: dict[str, FlowPacketAssembler] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)  # "topic/partition" -> the last offset this state holds
    last_seen_ns: dict[str, int] = field(default_factory=dict)  # assembler key -> its latest event time
    closing: dict[str, int] = field(default_factory=dict)  # socket key -> its CLOSE's time, applied at that watermark
    closing_generation: dict[str, int] = field(default_factory=dict)  # socket key -> its loss generation at the CLOSE
    payload_nics: dict[str, FlowPayloadAssembler] = field(default_factory=dict)  # NIC taps read from packet payloads

    @staticmethod
    def event_time_ns(kind: str, record: dict[str, Any]) -> int:
        """A raw record's event time (socket data: the syscall's exit); InvalidEvent outside 1970..2116, which
        no capture produces and which would overflow the state's 64-bit times."""
        time_ns = record["end_time"] if kind in ("socket_data", "span") else record["time"]
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
        """A packet at a NIC tap point. One the packet agent read with its payload (in-collector) is parsed by the
        protocol modules, as a socket's data is; a packet summary (raw.packets) by the fields tshark dissected."""
        self.event_time_ns("packet", record)
        check_packet(record)
        tap = f"{record['host']}|{record['interface']}|{record['tap_point']}"
        self.last_seen_ns[tap] = record["time"]
        if "payload" in record:
            payloads = self.payload_nics.get(tap)
            if payloads is None:
                payloads = self.payload_nics[tap] = FlowPayloadAssembler(self.config.assembly)
            return payloads.add(record)
        assembler = self.nics.get(tap)
        if assembler is None:
            assembler = self.nics[tap] = FlowPacketAssembler(self.config.nic)
        return assembler.add(record)

    def span(self, record: dict[str, Any]) -> list[Span]:
        """A span an agent assembled on the node (in-collector): it goes on as the spans assembled here do."""
        return [Span.from_record(record)]

    def lifecycle(self, record: dict[str, Any]) -> list[Span]:
        """A CLOSE ends the socket's assembler once the watermark passes its time (`advance`): lifecycle events
        come on their own topic, so the socket's last data may still be on its way when the CLOSE arrives.
        Requests still open then end flagged as cut off."""
        self.event_time_ns("lifecycle", record)
        if record["kind"] != "CLOSE":
            return []
        key = f"{record['host']}|{record['pid']}|{record['socket_id']}"
        self.closing[key] = record["time"]  # its data may come later still
        if record.get("loss_generation") is not None:
            self.closing_generation[key] = record["loss_generation"]
        return []

    def advance(self, watermark_ns: int) -> list[Span]:
        """Closes and timeouts due at this watermark; assemblers with nothing open and no input for
        `idle_state_ns` are forgotten (UDP sockets and NIC taps never see a close)."""
        out: list[Span] = []
        for key, time_ns in sorted(self.closing.items(), key=lambda item: (item[1], item[0])):
            if time_ns <= watermark_ns:
                del self.closing[key]
                generation = self.closing_generation.pop(key, None)
                assembler = self.sockets.pop(key, None)
                self.last_seen_ns.pop(key, None)
                if assembler is not None:
                    out += assembler.close(time_ns, generation)
        for assemblers in (self.sockets, self.nics, self.payload_nics):
            for key in sorted(assemblers):
                out += assemblers[key].expire(watermark_ns)
                if assemblers[key].idle and self.last_seen_ns.get(key, 0) + self.config.idle_state_ns <= watermark_ns:
                    del assemblers[key]
                    self.last_seen_ns.pop(key, None)
        return out

    @property
    def empty(self) -> bool:
        return not self.sockets and not self.nics and not self.payload_nics and not self.closing

    def abandon(self) -> tuple[list[Span], int]:
        """Capture ends (an agent assembling on its node stops), not the flow: closes already seen are applied,
        responses in progress end as captured. Returns those spans and the number of requests left unanswered,
        which are dropped, not reported as failures: nothing says how they ended."""
        out: list[Span] = []
        for key, time_ns in sorted(self.closing.items(), key=lambda item: (item[1], item[0])):
            if key in self.sockets:
                out += self.sockets.pop(key).close(time_ns, self.closing_generation.get(key))
        unanswered = 0
        for socket in self.sockets.values():
            before = socket.counters.abandoned
            out += socket.abandon()
            unanswered += socket.counters.abandoned - before
        for nic in [*self.nics.values(), *self.payload_nics.values()]:
            before = nic.abandoned
            out += nic.abandon()
            unanswered += nic.abandoned - before
        self.sockets.clear()
        self.nics.clear()
        self.payload_nics.clear()
        self.closing.clear()
        self.closing_generation.clear()
        self.last_seen_ns.clear()
        return out, unanswered

    @property
    def latest_event_ns(self) -> int:
        """The latest event time an assembler of this flow has seen (0: none)."""
        return max(self.last_seen_ns.values(), default=0)

    def to_state(self) -> dict[str, Any]:
        """JSON-ready data, sharing nothing mutable with the stage (so it is a snapshot too); the configuration
        is not part of it: the engine passes its own to `from_state`."""
        return {"sockets": {k: a.to_state() for k, a in self.sockets.items()}, "nics": {k: a.to_state() for k, a in self.nics.items()},
                "applied": dict(self.applied), "last_seen_ns": dict(self.last_seen_ns), "closing": dict(self.closing),
                "closing_generation": dict(self.closing_generation), "payload_nics": {k: a.to_state() for k, a in self.payload_nics.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any], config: StageConfig) -> FlowStage:
        """The stage of `to_state`; UndecodableState when the data is not one."""
        try:
            return cls(config, {k: SocketAssembler.from_state(a, config.assembly) for k, a in state["sockets"].items()},
                       {k: FlowPacketAssembler.from_state(a, config.nic) for k, a in state["nics"].items()},
                       state_ints(state["applied"]), state_ints(state["last_seen_ns"]), state_ints(state["closing"]),
                       state_ints(state.get("closing_generation", {})),  # absent in state written before it existed
                       {k: FlowPayloadAssembler.from_state(a, config.assembly) for k, a in state.get("payload_nics", {}).items()})
        except UndecodableState:
            raise
        except Exception as exc:  # malformed data fails in many ways (a missing key, a wrong shape); all mean the same
            raise UndecodableState(f"not a flow stage's state: {type(exc).__name__}: {exc}") from None

    def next_deadline_ns(self) -> int | None:
        """The lowest watermark at which `advance` has work: a timeout, a response's linger, or forgetting an idle
        assembler. An engine with per-key timers (Flink) sets one here; one that advances every key each batch
        (Faust) needs none."""
        deadlines = list(self.closing.values())
        for assemblers in (self.sockets, self.nics, self.payload_nics):
            for key, assembler in assemblers.items():
                due = assembler.next_deadline_ns
                if due is None:
                    due = self.last_seen_ns.get(key, 0) + self.config.idle_state_ns
                deadlines.append(due)
        return min(deadlines, default=None)


# stage 2 ----------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Emitted:
    """What one advance of the keyed stages produced, as the records of the output topics."""

    spans: list[dict[str, Any]] = field(default_factory=list)
    paths: list[dict[str, Any]] = field(default_factory=list)
    red: list[dict[str, Any]] = field(default_factory=list)
    network: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.spans) + len(self.paths) + len(self.red) + len(self.network) + len(self.alerts)


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


def state_ints(mapping: dict[str, Any]) -> dict[str, int]:
    """A str -> int map of decoded state, checked (an offset or a time the engine compares)."""
    if not all(type(k) is str and type(v) is int for k, v in mapping.items()):
        raise UndecodableState("a map of state holds a key or value of the wrong type")
    return dict(mapping)
