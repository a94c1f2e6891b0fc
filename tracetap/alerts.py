"""The seed's findings as Alert records: a slow request and the span that held the time, a 5xx whose
trace holds a failed dependency, a DNS query storm, and a p99 regression against a service's baseline.

Rules read linked traces and closed metric windows, so they fire from the same evidence in every engine;
alert ids derive from that evidence, so a replay re-emits the same ids.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tracetap.model import Span, TapSide, stable_id
from tracetap.paths import SEGMENTS, join_key

_FAILED_DNS = ("NXDOMAIN", "SERVFAIL", "REFUSED")


@dataclass(frozen=True, slots=True)
class AlertConfig:
    slow_request_ns: int = 1_000_000_000  # a trace whose root takes longer is a SLOW_REQUEST
    dns_storm_queries_per_s: float = 10.0  # per client workload, over one window
    dns_storm_nxdomain_ratio: float = 0.5
    regression_factor: float = 2.0  # p99 above this times the baseline's median p99 ...
    regression_min_delta_ns: int = 50_000_000  # ... and at least this much above it
    regression_baseline_windows: int = 6  # windows that make the baseline (at least 3 must be in)
    regression_min_requests: int = 5


def _alert(kind: str, time_ns: int, severity: str, workload: str | None, summary: str, *, evidence: tuple[object, ...],
           suggestion: str | None = None, trace_id: str | None = None, span_ids: list[str] | None = None,
           workloads: list[str] | None = None, measurements: dict[str, float] | None = None,
           attributes: dict[str, str] | None = None) -> dict[str, Any]:
    return {"alert_id": stable_id("alert", kind, *evidence), "time": time_ns, "kind": kind, "severity": severity,
            "workload": workload, "summary": summary, "suggestion": suggestion, "trace_id": trace_id,
            "span_ids": span_ids or [], "workloads": sorted(set(workloads or ([workload] if workload else []))),
            "measurements": measurements or {}, "attributes": attributes or {}}


def _describe(span: Span) -> str:
    return " ".join(x for x in (span.request_type, span.request_resource) if x) or span.protocol


def slow_request(trace: list[Span], paths: dict[tuple[str, str], dict[str, Any]], config: AlertConfig) -> dict[str, Any] | None:
    """The trace's root took too long: name the server span with the most time of its own (its duration less
    the calls it made), and the segment of that request's path (`paths`: the trace's records by join key)
    that held the time."""
    by_id = {s.span_id: s for s in trace}
    roots = [s for s in trace if s.parent_span_id not in by_id]
    root = max(roots, key=lambda s: (s.duration_ns, s.span_id))
    if root.duration_ns < config.slow_request_ns:
        return None
    children: dict[str, list[Span]] = {}
    for span in trace:
        if span.parent_span_id:
            children.setdefault(span.parent_span_id, []).append(span)
    servers = [s for s in trace if s.tap_side is TapSide.SERVER_PROCESS] or [root]

    def own_ns(span: Span) -> int:
        calls = [c for c in children.get(span.span_id, []) if c.tap_side is TapSide.CLIENT_PROCESS]
        return span.duration_ns - sum(c.duration_ns for c in calls)

    culprit = max(servers, key=lambda s: (own_ns(s), s.span_id))
    key = join_key(culprit)
    record = paths.get(key, {}) if key is not None else {}
    segments = {name: float(record[name]) for name in SEGMENTS if record.get(name) is not None}
    if culprit.tap_side is TapSide.SERVER_PROCESS:
        segments["server_own_ns"] = float(own_ns(culprit))
    return _slow_alert(root, culprit, own_ns(culprit), segments, root.trace_id)


def _slow_alert(root: Span, culprit: Span, held_ns: int, segments: dict[str, float], trace_id: str | None) -> dict[str, Any]:
    """The SLOW_REQUEST record: `root` took the time, `culprit` held `held_ns` of it, `segments` where."""
    segment = max(segments, key=lambda n: segments[n]) if segments else "unknown"
    workload = culprit.server_workload
    summary = (f"{_describe(root)} took {root.duration_ns / 1e9:.2f} s; {workload or culprit.server_ip} held "
               f"{held_ns / 1e9:.2f} s of it in {segment.removesuffix('_ns').replace('_', ' ')}")
    return _alert("SLOW_REQUEST", root.start_ns, "WARNING", workload, summary, evidence=(root.trace_id, culprit.span_id),
                  trace_id=trace_id, span_ids=[root.span_id, culprit.span_id],
                  workloads=[w for w in (root.client_workload, workload) if w],
                  measurements={"duration_ns": float(root.duration_ns), "culprit_duration_ns": float(culprit.duration_ns), **segments},
                  attributes={"segment": segment, "culprit_span_id": culprit.span_id, "endpoint": culprit.endpoint or ""},
                  suggestion="look at the application in the named workload: the network and the kernels were quick"
                  if segment in ("server_processing_ns", "server_own_ns") else None)


def slow_in_process(spans: list[Span], hops: dict[str, dict[str, Any]], config: AlertConfig) -> dict[str, Any] | None:
    """SLOW_REQUEST as one process sees it: `spans` are a server span of the process and the calls it made while
    serving it (linked), `hops` each span's hop (`segments`: its path record's; `callee_traced`: whether the
    called server's own process span was seen). The blame goes to the deepest slow server: a call as slow as the
    threshold to a traced server leaves the judgement to that server's process. There, the server's own time
    (its duration less its calls) is named when it is the larger part, else its slowest call (an untraced
    dependency: a database, a partner's API)."""
    servers = [s for s in spans if s.tap_side is TapSide.SERVER_PROCESS]
    calls = [s for s in spans if s.tap_side is TapSide.CLIENT_PROCESS]
    if not servers and not calls:
        return None
    top = max(servers or calls, key=lambda s: (s.duration_ns, s.span_id))
    if top.duration_ns < config.slow_request_ns:
        return None

    def traced(call: Span) -> bool:
        return bool(hops.get(call.span_id, {}).get("callee_traced"))

    made = [c for c in calls if c.parent_span_id == top.span_id]
    if top.tap_side is TapSide.CLIENT_PROCESS:  # a call made outside any request this process served
        if traced(top):
            return None
        culprit, held = top, top.duration_ns
    else:
        if any(c.duration_ns >= config.slow_request_ns and traced(c) for c in made):
            return None
        own = top.duration_ns - sum(c.duration_ns for c in made)
        slowest = max(made, key=lambda c: (c.duration_ns, c.span_id), default=None)
        culprit, held = (top, own) if slowest is None or own >= slowest.duration_ns else (slowest, slowest.duration_ns)
    segments = {str(k): float(v) for k, v in hops.get(culprit.span_id, {}).get("segments", {}).items()}
    segments["server_own_ns" if culprit.tap_side is TapSide.SERVER_PROCESS else "dependency_ns"] = float(held)
    return _slow_alert(top, culprit, held, segments, culprit.trace_id)


def failed_dependency(trace: list[Span], failed_connects: list[dict[str, Any]]) -> dict[str, Any] | None:
    """An HTTP 5xx whose trace holds a failed DNS answer, or whose server process saw a connect refused
    while it served the request."""
    errors = sorted((s for s in trace if s.protocol == "HTTP" and (s.response_code or 0) >= 500), key=lambda s: (s.start_ns, s.span_id))
    if not errors:
        return None
    top = errors[0]
    dns = [s for s in trace if s.protocol == "DNS" and s.response_message in _FAILED_DNS and s.tap_side is TapSide.CLIENT_PROCESS]
    dns = dns or [s for s in trace if s.protocol == "DNS" and s.response_message in _FAILED_DNS]
    server = next((s for s in errors if s.tap_side is TapSide.SERVER_PROCESS), None)
    if dns:  # the 5xx served by the process whose own lookup failed: the callers' 5xx only pass it on
        by_id = {s.span_id: s for s in trace}
        origin = _served_by(min(dns, key=lambda s: (s.start_ns, s.span_id)), by_id)
        if origin is not None and origin in errors:
            top = server = origin
    refused = [e for e in failed_connects if server is not None and e["host"] == server.host and e["pid"] == server.pid
               and server.start_ns <= e["time"] <= server.end_ns]
    if not dns and not refused:
        return None
    where = (server or top).server_workload
    if dns:
        first = min(dns, key=lambda s: (s.start_ns, s.span_id))
        cause = f"DNS {first.response_message} for {first.request_resource}"
        attributes = {"dependency": "DNS", "dns.rcode": first.response_message or "", "dns.name": first.request_resource or ""}
    else:
        first_refused = min(refused, key=lambda e: e["time"])
        cause = f"connect to {first_refused['remote_ip']}:{first_refused['remote_port']} failed ({first_refused['error_name'] or first_refused['error_code']})"
        attributes = {"dependency": "connect", "remote": f"{first_refused['remote_ip']}:{first_refused['remote_port']}"}
    summary = f"{_describe(top)} returned {top.response_code} from {where or top.server_ip}: {cause}"
    return _alert("ERROR_WITH_FAILED_DEPENDENCY", top.start_ns, "CRITICAL", where, summary, evidence=(top.trace_id, top.span_id),
                  trace_id=top.trace_id, span_ids=[top.span_id] + [s.span_id for s in dns],
                  workloads=[w for w in (where, top.client_workload) if w],
                  measurements={"response_code": float(top.response_code or 0), "failed_dns_spans": float(len(dns)),
                                "failed_connects": float(len(refused))}, attributes=attributes)


def _served_by(span: Span, by_id: dict[str, Span]) -> Span | None:
    """The server span a call was made while serving: its nearest server-process ancestor."""
    seen = set()
    while span.parent_span_id in by_id and span.span_id not in seen:
        seen.add(span.span_id)
        span = by_id[span.parent_span_id]
        if span.tap_side is TapSide.SERVER_PROCESS:
            return span
    return None


@dataclass(slots=True)
class DnsAccumulator:
    """DNS queries and failed answers of one client workload in one window (a metric, windowed like RED)."""

    queries: int = 0
    nxdomain: int = 0
    names: dict[str, int] = field(default_factory=dict)

    def add(self, span: Span) -> None:
        self.queries += 1
        if span.response_message == "NXDOMAIN":
            self.nxdomain += 1
        name = span.request_resource or "?"
        self.names[name] = self.names.get(name, 0) + 1

    def to_state(self) -> list[Any]:
        return [self.queries, self.nxdomain, dict(self.names)]

    @classmethod
    def from_state(cls, state: list[Any]) -> DnsAccumulator:
        queries, nxdomain, names = state
        return cls(queries, nxdomain, dict(names))

    def merge(self, other: DnsAccumulator) -> None:
        self.queries += other.queries
        self.nxdomain += other.nxdomain
        for name, n in other.names.items():
            self.names[name] = self.names.get(name, 0) + n

    def result(self, key: tuple[str], window_start_ns: int, window_ns: int) -> dict[str, Any]:
        return {"client_workload": key[0], "window_start_ns": window_start_ns, "window_ns": window_ns, "queries": self.queries,
                "nxdomain": self.nxdomain, "top_names": sorted(self.names, key=lambda n: (-self.names[n], n))[:5]}


def dns_storm(windows: list[dict[str, Any]], config: AlertConfig) -> list[dict[str, Any]]:
    """One alert per window in which client workloads flood DNS with mostly failing queries."""
    by_window: dict[int, list[dict[str, Any]]] = {}
    for w in windows:
        rate = w["queries"] / (w["window_ns"] / 1e9)
        if rate >= config.dns_storm_queries_per_s and w["nxdomain"] / w["queries"] >= config.dns_storm_nxdomain_ratio:
            by_window.setdefault(w["window_start_ns"], []).append(w)
    alerts = []
    for start, storming in sorted(by_window.items()):
        storming.sort(key=lambda w: w["client_workload"])
        names = [w["client_workload"] for w in storming]
        seconds = storming[0]["window_ns"] / 1e9
        queries, nxdomain = sum(w["queries"] for w in storming), sum(w["nxdomain"] for w in storming)
        measurements = {"dns_queries_per_s": queries / seconds, "nxdomain_ratio": nxdomain / queries}
        for w in storming:
            measurements[f"{w['client_workload']}.dns_queries_per_s"] = w["queries"] / seconds
            measurements[f"{w['client_workload']}.nxdomain_ratio"] = w["nxdomain"] / w["queries"]
        alerts.append(_alert(
            "DNS_STORM", start, "WARNING", names[0] if len(names) == 1 else None,
            f"{', '.join(names)} sent {queries / seconds:.0f} DNS queries/s, {nxdomain / queries:.0%} NXDOMAIN",
            evidence=(start, *names), workloads=names, measurements=measurements,
            attributes={"top_names": ", ".join(storming[0]["top_names"])},
            suggestion="names are expanded through the search path (ndots): use fully qualified names with a trailing dot, "
                       "or lower ndots in the pods' resolv.conf (dnsConfig options ndots:1)"))
    return alerts


@dataclass(slots=True)
class RegressionTracker:
    """Recent p99s per (server workload, endpoint) of server-side RED windows; flags a window far above them."""

    config: AlertConfig = field(default_factory=AlertConfig)
    history: dict[tuple[str | None, str], deque[int]] = field(default_factory=dict)

    def to_state(self) -> list[Any]:
        return [[workload, endpoint, list(p99s)] for (workload, endpoint), p99s in self.history.items()]

    def load_state(self, state: list[Any]) -> None:
        self.history = {(workload, endpoint): deque(p99s, maxlen=self.config.regression_baseline_windows)
                        for workload, endpoint, p99s in state}

    def check(self, red: dict[str, Any]) -> dict[str, Any] | None:
        if red["tap_side"] != "SERVER_PROCESS" or red["request_count"] < self.config.regression_min_requests:
            return None
        key = (red["server_workload"], red["endpoint"])
        past = self.history.setdefault(key, deque(maxlen=self.config.regression_baseline_windows))
        p99 = red["latency_p99_ns"]
        alert = None
        if len(past) >= 3:
            baseline = int(statistics.median(past))
            if p99 > baseline * self.config.regression_factor and p99 - baseline >= self.config.regression_min_delta_ns:
                alert = _alert("LATENCY_REGRESSION", red["window_start"] * 1_000_000, "WARNING", red["server_workload"],
                               f"{red['endpoint']} on {red['server_workload']}: p99 {p99 / 1e6:.0f} ms against "
                               f"{baseline / 1e6:.0f} ms over the previous {len(past)} windows",
                               evidence=(red["metric_id"],), workloads=[w for w in (red["server_workload"],) if w],
                               measurements={"p99_ns": float(p99), "baseline_p99_ns": float(baseline),
                                             "request_count": float(red["request_count"])},
                               attributes={"endpoint": red["endpoint"], "metric_id": red["metric_id"]})
        past.append(p99)
        return alert
