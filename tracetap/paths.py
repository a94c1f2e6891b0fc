"""The four-point full-path join: a request's spans at c-p, c, s and s-p share the client's end of the
connection and the TCP sequence number of the request's first byte (UDP/DNS: the DNS id), which a DNAT
keeps; joined, they show how long each segment took. Partial paths are emitted when the join window
passes; nothing waits forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracetap.model import Span, TapSide, stable_id

_ORDER = (TapSide.CLIENT_PROCESS, TapSide.CLIENT_NIC, TapSide.SERVER_NIC, TapSide.SERVER_PROCESS)

# A PathRecord's segment fields, in the order a request and its response cross them.
SEGMENTS = ("req_client_stack_ns", "req_network_ns", "req_server_stack_ns", "server_processing_ns",
            "resp_server_stack_ns", "resp_network_ns", "resp_client_stack_ns")


def conversation_key(span: Span) -> str:
    """The client's end of the connection (transport, client address and port): what a DNAT keeps. A client
    that connects to a Kubernetes Service's ClusterIP and the pod that kube-proxy sent it to see different
    flow ids, but the same client end and the same TCP sequence numbers. A loopback client end is the
    host's own, so the host is part of it."""
    if span.client_ip.startswith("127.") or span.client_ip == "::1":
        return f"{span.l4_protocol}|{span.host}|{span.client_ip}|{span.client_port}"
    return f"{span.l4_protocol}|{span.client_ip}|{span.client_port}"


def join_key(span: Span) -> tuple[str, str] | None:
    """(conversation, request) the four points agree on, also across a DNAT; None when the span cannot join."""
    if span.req_tcp_seq is not None and span.l4_protocol == "TCP":
        return conversation_key(span), f"seq:{span.req_tcp_seq}"
    dns_id = span.attributes.get("dns.id")
    if dns_id is not None:
        return conversation_key(span), f"dns:{dns_id}"
    return None


@dataclass(slots=True)
class PathState:
    """The spans of one request seen so far; engines keep one per join key in keyed state."""

    key: tuple[str, str]
    first_start_ns: int
    spans: dict[TapSide, Span] = field(default_factory=dict)

    def add(self, span: Span) -> bool:
        """Keep the span (the first per tap side); True when all four points are in."""
        self.spans.setdefault(span.tap_side, span)
        self.first_start_ns = min(self.first_start_ns, span.start_ns)
        return len(self.spans) == 4

    def record(self) -> dict[str, Any]:
        """The PathRecord for what was seen; segment latencies are null where a point is missing."""
        cp, c, s, sp = (self.spans.get(side) for side in _ORDER)
        outer = next(span for span in (cp, c, s, sp) if span is not None)
        served = next(span for span in (sp, s, c, cp) if span is not None)  # the server's own address, after any DNAT
        called = next((span for span in (cp, c) if span is not None), served)  # the address the client connected to
        errors = [span.error_class for span in (sp, s, c, cp) if span is not None and span.error_class]
        response_code = next((span.response_code for span in (sp, s, c, cp) if span is not None and span.response_code is not None), None)

        def gap(a: int | None, b: int | None) -> int | None:
            return b - a if a is not None and b is not None else None

        return {
            "path_id": stable_id("path", *self.key), "trace_id": next((x.trace_id for x in (sp, cp, s, c) if x and x.trace_id), None),
            "flow_id": outer.flow_id, "protocol": outer.protocol, "start_time": outer.start_ns, "duration_ns": outer.duration_ns,
            "client_ip": outer.client_ip, "client_port": outer.client_port, "server_ip": served.server_ip, "server_port": served.server_port,
            **_service(called, served),
            "client_workload": next((x.client_workload for x in (cp, c, s, sp) if x and x.client_workload), None),
            "server_workload": next((x.server_workload for x in (sp, s, c, cp) if x and x.server_workload), None),
            "request_type": outer.request_type, "request_resource": outer.request_resource, "response_code": response_code,
            "error_class": errors[0] if errors else None, "req_tcp_seq": outer.req_tcp_seq,
            "points_seen": [str(side) for side in _ORDER if side in self.spans], "complete": len(self.spans) == 4,
            "client_process_span_id": cp.span_id if cp else None, "client_nic_span_id": c.span_id if c else None,
            "server_nic_span_id": s.span_id if s else None, "server_process_span_id": sp.span_id if sp else None,
            "req_client_stack_ns": gap(cp and cp.start_ns, c and c.start_ns),
            "req_network_ns": gap(c and c.start_ns, s and s.start_ns),
            "req_server_stack_ns": gap(s and s.start_ns, sp and sp.start_ns),
            "server_processing_ns": sp.duration_ns if sp else None,
            "resp_server_stack_ns": gap(sp and sp.end_ns, s and s.end_ns),
            "resp_network_ns": gap(s and s.end_ns, c and c.end_ns),
            "resp_client_stack_ns": gap(c and c.end_ns, cp and cp.end_ns),
        }


def share_workloads(spans: list[Span]) -> None:
    """Fill each point's missing workloads from the other points of its request (in place): a client that called a
    Service's ClusterIP cannot tell the server's workload from the address it called, the server's points can."""
    points: dict[tuple[str, str], list[Span]] = {}
    for span in spans:
        key = join_key(span)
        if key is not None:
            points.setdefault(key, []).append(span)
    for group in points.values():
        if len(group) < 2:
            continue
        ranked = sorted(group, key=lambda s: _ORDER.index(s.tap_side))
        client = next((s.client_workload for s in ranked if s.client_workload), None)
        server = next((s.server_workload for s in reversed(ranked) if s.server_workload), None)
        for span in group:
            span.client_workload = span.client_workload or client
            span.server_workload = span.server_workload or server


def _service(called: Span, served: Span) -> dict[str, Any]:
    """The address the client called, where a DNAT sent the request elsewhere (a ClusterIP and its pod)."""
    if (called.server_ip, called.server_port) == (served.server_ip, served.server_port):
        return {"service_ip": None, "service_port": None}
    return {"service_ip": called.server_ip, "service_port": called.server_port}


@dataclass(frozen=True, slots=True)
class JoinConfig:
    window_ns: int = 10_000_000_000  # a path is emitted, partial or not, once the watermark passes its first start + this


class PathJoiner:
    """All open paths of one conversation (`conversation_key`: engines key by it, so a request's points meet in one place)."""

    def __init__(self, config: JoinConfig = JoinConfig()) -> None:
        self._config = config
        self._open: dict[tuple[str, str], PathState] = {}
        self.unjoinable = 0

    def add(self, span: Span) -> list[dict[str, Any]]:
        key = join_key(span)
        if key is None:
            self.unjoinable += 1
            return []
        state = self._open.get(key)
        if state is None:
            state = self._open[key] = PathState(key, span.start_ns)
        if state.add(span):
            del self._open[key]
            return [state.record()]
        return []

    def expire(self, watermark_ns: int) -> list[dict[str, Any]]:
        due = sorted((s for s in self._open.values() if s.first_start_ns + self._config.window_ns <= watermark_ns),
                     key=lambda s: (s.first_start_ns, s.key))
        for state in due:
            del self._open[state.key]
        return [state.record() for state in due]

    def __len__(self) -> int:
        return len(self._open)
