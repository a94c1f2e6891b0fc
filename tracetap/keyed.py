"""Stages 2 to 4: the work after the flow stage, each stage keyed by something that spreads as traffic grows.

2. `ConversationStage`, one per conversation (`paths.conversation_key`: the client's end of a connection,
   which a DNAT keeps). The points of one request (c-p, c, s, s-p) meet here: they are tagged with
   workloads, chained (each point the parent of the next), given the hop's trace id and joined into the
   path record. NIC spans leave for the spans topic; process spans go on to their process.
3. `ProcessStage`, one per process (host and pid). A server span and the calls its process made while
   serving it (thread trace id, or a trace header it received) are linked, and the alert rules read them:
   SLOW_REQUEST blames the deepest slow server's own time or its slowest untraced call;
   ERROR_WITH_FAILED_DEPENDENCY ties a 5xx to a failed DNS answer or connect in the same process.
4. `SeriesStage`, one per metric series: the RED windows of one server endpoint (and the latency
   regressions against its own past), the network windows of one client/server address pair, the DNS
   windows of one client workload (and its DNS storms).

A trace id names one hop: the client and server spans of a request share it (a W3C `traceparent` one of
them carried, else one derived from the hop's first point). A call chain crosses processes through the
parent links, and `tracetap trace` follows them at query time, as DeepFlow assembles its traces; no stage
has to see a whole chain, so none is global.

Every stage is a plain object the engine keeps per key as `to_state()` (JSON-ready data), fed records and
advanced on the engine's watermark. An advance returns `Routed` items: where each output goes next (a
stage and its key, or an output topic). `KeyedPipeline` (tracetap/pipeline.py) runs them all in one
process; the engines route the same items through their keyed streams.
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

from tracetap.alerts import DnsAccumulator, RegressionTracker, dns_storm, failed_dependency, slow_in_process
from tracetap.errors import UndecodableState
from tracetap.metrics import NetworkKey, NetworkWindows, RedKey, RedWindows, TumblingWindows, network_key
from tracetap.model import Span, TapSide, span_from_state, span_to_state, stable_id, w3c_trace_id
from tracetap.paths import SEGMENTS, PathState, conversation_key, join_key, share_workloads
from tracetap.stages import PendingTraces, StageConfig, state_ints
from tracetap.tracing import process_parents
from tracetap.workloads import WorkloadIndex

_POINT_ORDER = {TapSide.CLIENT_PROCESS: 0, TapSide.CLIENT_NIC: 1, TapSide.SERVER_NIC: 2, TapSide.SERVER_PROCESS: 3}
_PROCESS_SIDES = (TapSide.CLIENT_PROCESS, TapSide.SERVER_PROCESS)

# Where a Routed item goes: a keyed stage, or an output topic (its name in schemas/catalog.py, without the prefix).
CONVERSATION, PROCESS, SERIES = "conversation", "process", "series"
SPANS, PATHS, RED, NETWORK, ALERTS = "spans", "paths", "metrics.red", "metrics.network", "alerts"


class Routed(NamedTuple):
    """One output of a stage: `to` is a stage (`key` is then its key) or an output topic (`key` is the record's).
    A stage's item is a tuple, its kind first: ("span", Span) or ("lifecycle", record) for a series,
    ("span", Span, hop) or ("connect_failed", record) for a process (streams/edge.py encodes them as data)."""

    to: str
    key: str
    item: Any


# keys ---------------------------------------------------------------------------------------------------
def conversation_of(span: Span) -> str:
    """The conversation stage's key: the client's end of the connection; a span that cannot join (no TCP
    sequence number, no DNS id) is a conversation of its own flow."""
    return conversation_key(span) if join_key(span) is not None else f"flow|{span.flow_id}"


def process_of(host: str, pid: int | None) -> str:
    return f"{host}|{pid}"


def red_series(span: Span) -> str:
    """RED windows are kept per server workload (its address where it has none) and endpoint: the series a
    latency regression compares with its own past."""
    return f"red|{span.server_workload or span.server_ip}|{span.endpoint or span.request_type or '?'}"


def dns_series(span: Span) -> str:
    return f"dns|{span.client_workload or span.client_ip}"


def network_series(record: dict[str, Any]) -> str:
    key = network_key(record)
    return f"net|{key.l4_protocol}|{key.client_ip}|{key.server_ip}|{key.server_port}"


def lifecycle_routes(record: dict[str, Any]) -> list[Routed]:
    """Where a lifecycle event goes from the flow stage: its series' network windows; a failed connect also to
    its process, where it may explain a 5xx."""
    routes = [Routed(SERIES, network_series(record), ("lifecycle", record))]
    if record["kind"] == "CONNECT_FAILED":
        routes.append(Routed(PROCESS, process_of(record["host"], record["pid"]), ("connect_failed", record)))
    return routes


@dataclass(slots=True)
class KeyedCounters:
    spans_in: int = 0
    duplicate_spans: int = 0  # replays after a restart upstream: dropped by span id
    late_spans: int = 0  # beyond the allowed lateness: the engine dead-letters them
    duplicate_lifecycle: int = 0
    late_lifecycle: int = 0
    late_in_windows: int = 0  # a span or event whose window had closed when it arrived: counted nowhere else
    hops: int = 0

    def add(self, other: KeyedCounters) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


def _forget_before(watermark_ns: int, config: StageConfig) -> int:
    """Span ids remembered against replays are forgotten once this far behind the watermark."""
    return watermark_ns - 3 * config.trace_gap_ns - config.allowed_lateness_ns


def _forget(seen: dict[Any, int], before: int) -> None:
    """Drop remembered entries older than `before`, oldest first. Entries come in about the order of their
    times, so this costs what it drops; one out of order waits for those before it (a little memory)."""
    while seen:
        key = next(iter(seen))
        if seen[key] >= before:
            return
        del seen[key]


def _oldest(seen: dict[Any, int]) -> int:
    return next(iter(seen.values()))


def _forget_due(time_ns: int, config: StageConfig) -> int:
    """The watermark at which something remembered at this time is forgotten (`_forget_before`'s inverse)."""
    return time_ns + 3 * config.trace_gap_ns + config.allowed_lateness_ns + 1


# stage 2 -----------------------------------------------------------------------------------------------
@dataclass(slots=True)
class ConversationStage:
    """The open requests of one conversation, by request (TCP sequence number or DNS id)."""

    config: StageConfig = field(default_factory=StageConfig)
    requests: dict[str, list[Span]] = field(default_factory=dict)  # request -> its points so far, in arrival order
    emitted: dict[str, int] = field(default_factory=dict)  # span id -> end, remembered to drop replays
    counters: KeyedCounters = field(default_factory=KeyedCounters)
    _ends: dict[str, int] = field(default_factory=dict)  # request -> its last point's end
    _by_end: list[tuple[int, str]] = field(default_factory=list)  # heap of (end, request); stale entries skipped

    def span(self, span: Span, watermark_ns: int) -> bool:
        """Take a span from the flow stage; False when it is late beyond the allowed lateness (route it)."""
        self.counters.spans_in += 1
        request = _request_of(span)
        if span.span_id in self.emitted or any(span.span_id == s.span_id for s in self.requests.get(request, ())):
            self.counters.duplicate_spans += 1
            return True
        if span.end_ns < watermark_ns - self.config.allowed_lateness_ns:
            self.counters.late_spans += 1
            return False
        self._add(request, span)
        return True

    def _add(self, request: str, span: Span) -> None:
        self.requests.setdefault(request, []).append(span)
        end = max(self._ends.get(request, span.end_ns), span.end_ns)
        self._ends[request] = end
        heapq.heappush(self._by_end, (end, request))

    def _earliest_end(self) -> int | None:
        heap = self._by_end
        while heap and self._ends.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    @property
    def next_deadline_ns(self) -> int | None:
        """The watermark at which `advance` has work: a request complete, or remembered ids to forget."""
        earliest = self._earliest_end()
        due = [] if earliest is None else [earliest + self.config.trace_gap_ns]
        if self.emitted:
            due.append(_forget_due(_oldest(self.emitted), self.config))
        return min(due, default=None)

    @property
    def empty(self) -> bool:
        return not self.requests and not self.emitted

    @property
    def open_work(self) -> bool:
        return bool(self.requests)

    @property
    def waiting(self) -> int:
        """Spans waiting for the rest of their request (what an engine's stats show)."""
        return sum(map(len, self.requests.values()))

    def advance(self, watermark_ns: int, workloads: WorkloadIndex, final: bool = False) -> list[Routed]:
        """Every request whose last point ended a trace gap before the watermark (all of them when `final`)."""
        horizon = watermark_ns - self.config.trace_gap_ns
        if final:
            done = list(self.requests)
            self._by_end.clear()
        else:
            done = []
            while (earliest := self._earliest_end()) is not None and earliest <= horizon:
                request = heapq.heappop(self._by_end)[1]
                self._ends[request] = -1  # taken: its other entries in the heap are stale now
                done.append(request)
        out: list[Routed] = []
        for request in sorted(done, key=lambda r: min((s.start_ns, s.span_id) for s in self.requests[r])):
            del self._ends[request]
            out += self._emit(self.requests.pop(request), workloads)
        _forget(self.emitted, _forget_before(watermark_ns, self.config))
        return out

    def _emit(self, points: list[Span], workloads: WorkloadIndex) -> list[Routed]:
        self.counters.hops += 1
        spans = sorted((workloads.tag(replace(s)) for s in points), key=lambda s: (s.start_ns, s.span_id))
        share_workloads(spans)
        chain = sorted({s.tap_side: s for s in reversed(spans)}.values(), key=lambda s: _POINT_ORDER[s.tap_side])
        for span in spans:
            span.parent_span_id = None
        if join_key(spans[0]) is not None:
            for upper, lower in zip(chain, chain[1:]):
                lower.parent_span_id = upper.span_id
        else:
            chain = []
        incoming = next((t for t in (w3c_trace_id(s.trace_headers.get("traceparent")) for s in spans) if t), None)
        hop_trace = incoming or stable_id("trace", (chain or spans)[0].span_id)
        for span in spans:
            in_chain = any(span is c for c in chain)
            span.trace_id = hop_trace if in_chain or incoming else stable_id("trace", span.span_id)
        out: list[Routed] = []
        segments: dict[str, float] = {}
        callee_traced = any(s.tap_side is TapSide.SERVER_PROCESS for s in chain)
        if chain:
            state = PathState(join_key(chain[0]), chain[0].start_ns)  # type: ignore[arg-type]
            for span in chain:
                state.add(span)
            record = state.record()
            out.append(Routed(PATHS, record["flow_id"], record))
            segments = {name: float(record[name]) for name in SEGMENTS if record.get(name) is not None}
        for span in spans:
            self.emitted[span.span_id] = span.end_ns
            out.append(Routed(SERIES, red_series(span), ("span", span)))
            if span.protocol == "DNS" and span.tap_side is TapSide.CLIENT_PROCESS:
                out.append(Routed(SERIES, dns_series(span), ("span", span)))
            if span.tap_side in _PROCESS_SIDES:
                hop = {"segments": segments if any(span is c for c in chain) else {}, "callee_traced": callee_traced}
                out.append(Routed(PROCESS, process_of(span.host, span.pid), ("span", span, hop)))
            else:
                out.append(Routed(SPANS, span.flow_id, span.to_record()))
        return out

    def to_state(self) -> dict[str, Any]:
        return {"requests": [[span_to_state(s) for s in spans] for spans in self.requests.values()], "emitted": dict(self.emitted),
                "counters": asdict(self.counters)}

    @classmethod
    def from_state(cls, state: dict[str, Any], config: StageConfig) -> ConversationStage:
        try:
            stage = cls(config, emitted=state_ints(state["emitted"]), counters=KeyedCounters(**state["counters"]))
            for points in state["requests"]:
                for span in map(span_from_state, points):
                    stage._add(_request_of(span), span)
            return stage
        except UndecodableState:
            raise
        except Exception as exc:
            raise UndecodableState(f"not a conversation stage's state: {type(exc).__name__}: {exc}") from None


def _request_of(span: Span) -> str:
    key = join_key(span)
    return key[1] if key is not None else f"span|{span.span_id}"


# stage 3 -----------------------------------------------------------------------------------------------
def process_link_keys(span: Span) -> list[tuple[Any, ...]]:
    """What ties spans within one process: the thread trace id, and trace headers received and sent."""
    keys: list[tuple[Any, ...]] = []
    if span.syscall_trace_id_request:
        keys.append(("thread", span.syscall_trace_id_request))
    for name, value in sorted(span.trace_headers.items()):
        keys.append(("header", name, value))
    return keys


@dataclass(slots=True)
class ProcessStage:
    """The spans of one process waiting for the server span they belong to, and its recent failed connects."""

    config: StageConfig = field(default_factory=StageConfig)
    pending: PendingTraces = field(init=False)  # groups span at most a trace gap from their first start
    hops: dict[str, dict[str, Any]] = field(default_factory=dict)  # span id -> its hop: path segments, callee traced
    emitted: dict[str, int] = field(default_factory=dict)
    failed_connects: list[dict[str, Any]] = field(default_factory=list)
    counters: KeyedCounters = field(default_factory=KeyedCounters)

    def __post_init__(self) -> None:
        self.pending = PendingTraces(process_link_keys, self.config.trace_gap_ns)

    def span(self, span: Span, hop: dict[str, Any]) -> None:
        self.counters.spans_in += 1
        if span.span_id in self.pending or span.span_id in self.emitted:
            self.counters.duplicate_spans += 1
            return
        self.pending.add(span)
        self.hops[span.span_id] = hop

    def connect_failed(self, record: dict[str, Any]) -> None:
        if record not in self.failed_connects:
            self.failed_connects.append(record)

    @property
    def next_deadline_ns(self) -> int | None:
        earliest = self.pending.earliest_end()
        due = [] if earliest is None else [earliest + 2 * self.config.trace_gap_ns]
        remembered = ([_oldest(self.emitted)] if self.emitted else []) + [e["time"] for e in self.failed_connects]
        if remembered:
            due.append(_forget_due(min(remembered), self.config))
        return min(due, default=None)

    @property
    def empty(self) -> bool:
        return not self.pending and not self.emitted and not self.failed_connects

    @property
    def open_work(self) -> bool:
        return bool(self.pending)

    @property
    def waiting(self) -> int:
        """Spans waiting for their process's links (what an engine's stats show)."""
        return len(self.pending)

    def advance(self, watermark_ns: int, final: bool = False) -> list[Routed]:
        """Every server span with the calls it made, once the watermark is two trace gaps past its group's last end:
        a call's hop leaves its conversation a gap after the hop's last point, which may end a little after the
        server span (two clocks: a NIC's capture and the kernel's), and must be here when the group goes."""
        horizon = watermark_ns - 2 * self.config.trace_gap_ns
        out: list[Routed] = []
        for group in self.pending.complete(None if final else horizon):
            ordered = sorted(group, key=lambda s: (s.start_ns, s.span_id))
            hops = {s.span_id: self.hops.pop(s.span_id) for s in ordered}
            by_id = {s.span_id: s for s in ordered}
            for call, server in process_parents(ordered, {s.span_id for s in ordered if s.parent_span_id}).items():
                by_id[call].parent_span_id = server
            for span in ordered:
                self.emitted[span.span_id] = span.end_ns
                out.append(Routed(SPANS, span.flow_id, span.to_record()))
            for alert in (slow_in_process(ordered, hops, self.config.alerts), failed_dependency(ordered, self.failed_connects)):
                if alert is not None:
                    out.append(Routed(ALERTS, alert["alert_id"], alert))
        forget = _forget_before(watermark_ns, self.config)
        _forget(self.emitted, forget)
        self.failed_connects = [e for e in self.failed_connects if e["time"] >= forget]
        return out

    def to_state(self) -> dict[str, Any]:
        return {"pending": [[span_to_state(s), self.hops[s.span_id]] for s in self.pending.spans.values()],
                "emitted": dict(self.emitted), "failed_connects": list(self.failed_connects), "counters": asdict(self.counters)}

    @classmethod
    def from_state(cls, state: dict[str, Any], config: StageConfig) -> ProcessStage:
        try:
            stage = cls(config, emitted=state_ints(state["emitted"]), failed_connects=list(state["failed_connects"]),
                        counters=KeyedCounters(**state["counters"]))
            for span_state, hop in state["pending"]:
                span = span_from_state(span_state)
                stage.pending.add(span)
                stage.hops[span.span_id] = {"segments": {str(k): float(v) for k, v in hop["segments"].items()},
                                            "callee_traced": bool(hop["callee_traced"])}
            return stage
        except UndecodableState:
            raise
        except Exception as exc:
            raise UndecodableState(f"not a process stage's state: {type(exc).__name__}: {exc}") from None


# stage 4 -----------------------------------------------------------------------------------------------
@dataclass(slots=True)
class SeriesStage:
    """The open windows of one series. Spans reach it a trace gap after they end (the conversation stage holds
    them that long), so its windows close a trace gap later than the watermark says."""

    config: StageConfig = field(default_factory=StageConfig)
    red: RedWindows = field(init=False)
    network: NetworkWindows = field(init=False)
    dns: TumblingWindows = field(init=False)
    regressions: RegressionTracker = field(init=False)
    lifecycle_seen: dict[tuple[Any, ...], int] = field(default_factory=dict)  # identity -> time, remembered to drop replays
    counters: KeyedCounters = field(default_factory=KeyedCounters)

    def __post_init__(self) -> None:
        self.red = RedWindows(self.config.windows)
        self.network = NetworkWindows(self.config.windows)
        self.dns = TumblingWindows(self.config.windows, DnsAccumulator)
        self.regressions = RegressionTracker(self.config.alerts)

    def span(self, key: str, span: Span) -> None:
        """Count a span into the series `key` names (its RED or its DNS windows)."""
        self.counters.spans_in += 1
        counted = self.dns.add(span.end_ns, (span.client_workload or span.client_ip,), span) if key.startswith("dns|") \
            else self.red.add_span(span)
        if not counted:
            self.counters.late_in_windows += 1

    def lifecycle(self, record: dict[str, Any], watermark_ns: int, workloads: WorkloadIndex) -> bool:
        """Count a lifecycle event into the network windows (once: an upstream restart may replay it). False when
        it is late beyond the allowed lateness (route it)."""
        identity = (record["host"], record["time"], record["kind"], record["pid"], record["socket_id"], record["local_ip"],
                    record["local_port"], record["remote_ip"], record["remote_port"])
        if identity in self.lifecycle_seen:
            self.counters.duplicate_lifecycle += 1
            return True
        if record["time"] < watermark_ns - self.config.allowed_lateness_ns:
            self.counters.late_lifecycle += 1
            return False
        if not self.network.add_event(record, workloads.pair(record)):
            self.counters.late_in_windows += 1
        self.lifecycle_seen[identity] = record["time"]
        return True

    @property
    def next_deadline_ns(self) -> int | None:
        starts = [w.first_start_ns for w in (self.red, self.network, self.dns) if w.first_start_ns is not None]
        due = [min(starts) + self.config.windows.window_ns + self.config.windows.allowed_lateness_ns + self.config.trace_gap_ns] \
            if starts else []
        if self.lifecycle_seen:
            due.append(_forget_due(_oldest(self.lifecycle_seen), self.config))
        return min(due, default=None)

    @property
    def empty(self) -> bool:
        return not (self.open_work or self.lifecycle_seen)

    @property
    def open_work(self) -> bool:
        return bool(len(self.red) or len(self.network) or len(self.dns))

    @property
    def waiting(self) -> int:
        """RED windows not closed yet (what an engine's stats show)."""
        return len(self.red)

    def advance(self, watermark_ns: int, final: bool = False) -> list[Routed]:
        window_watermark = watermark_ns - self.config.trace_gap_ns
        if final:  # every open window, and no later one: the input may go on after an idle flush
            starts = [w.last_start_ns for w in (self.red, self.network, self.dns) if w.last_start_ns is not None]
            if starts:
                window_watermark = max(window_watermark, max(starts) + self.config.windows.window_ns + self.config.windows.allowed_lateness_ns)
        out: list[Routed] = []
        for record in self.red.advance(window_watermark):
            out.append(Routed(RED, record["metric_id"], record))
            alert = self.regressions.check(record)
            if alert is not None:
                out.append(Routed(ALERTS, alert["alert_id"], alert))
        out += [Routed(NETWORK, r["metric_id"], r) for r in self.network.advance(window_watermark)]
        out += [Routed(ALERTS, a["alert_id"], a) for a in dns_storm(self.dns.advance(window_watermark), self.config.alerts)]
        _forget(self.lifecycle_seen, _forget_before(watermark_ns, self.config))
        return out

    def to_state(self) -> dict[str, Any]:
        return {"red": self.red.to_state(), "network": self.network.to_state(), "dns": self.dns.to_state(),
                "regressions": self.regressions.to_state(), "lifecycle_seen": [[*k, t] for k, t in self.lifecycle_seen.items()],
                "counters": asdict(self.counters)}

    @classmethod
    def from_state(cls, state: dict[str, Any], config: StageConfig) -> SeriesStage:
        try:
            stage = cls(config, counters=KeyedCounters(**state["counters"]))
            stage.red.load_state(state["red"], RedKey._make)
            stage.network.load_state(state["network"], NetworkKey._make)
            stage.dns.load_state(state["dns"])
            stage.regressions.load_state(state["regressions"])
            stage.lifecycle_seen = {tuple(entry[:-1]): entry[-1] for entry in state["lifecycle_seen"]}
            return stage
        except UndecodableState:
            raise
        except Exception as exc:
            raise UndecodableState(f"not a series stage's state: {type(exc).__name__}: {exc}") from None


# what every host does with a stage -----------------------------------------------------------------------
def apply_item(kind: str, stage: Any, key: str, item: tuple[Any, ...], watermark_ns: int, workloads: WorkloadIndex) -> bool:
    """One routed item into the `kind` stage of `key` (tracetap/pipeline.py and both engines call this): False
    when the stage found it late beyond the allowed lateness. The stages check before they change anything,
    so an exception leaves the stage as it was."""
    what, *rest = item
    if kind == CONVERSATION:
        return stage.span(rest[0], watermark_ns)
    if kind == PROCESS:
        (stage.span if what == "span" else stage.connect_failed)(*rest)
        return True
    if what == "span":
        stage.span(key, *rest)
        return True
    return stage.lifecycle(rest[0], watermark_ns, workloads)


def advance_stage(kind: str, stage: Any, watermark_ns: int, workloads: WorkloadIndex, final: bool = False) -> list[Routed]:
    """A `kind` stage's advance at this watermark (the conversation stage tags what it emits with workloads)."""
    return stage.advance(watermark_ns, workloads, final) if kind == CONVERSATION else stage.advance(watermark_ns, final)
