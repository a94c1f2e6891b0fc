"""Zero-code call chains: parent links between spans, from three kinds of evidence.

1. Thread trace id: in one process, a client call (c-p) made while serving a request carries the
   syscall_trace_id of that server span (s-p); the server span is its parent.
2. The full path: the points of one request (c-p, c, s, s-p, joined on flow and request sequence
   number) form a chain, each point the parent of the next.
3. Trace headers (x-request-id, traceparent, sw8): where a thread hop broke rule 1, a client call
   carrying the header value a server span of the same process received has that server span as parent.

`link_spans` is a function of the set of spans (order-independent), so engines give equal ids. Trace ids are
W3C-sized (16 bytes, hex); where a span of the trace carried a W3C `traceparent`, its trace id is the trace's.
"""

from __future__ import annotations

from collections import defaultdict

from tracetap.model import Span, TapSide, stable_id, w3c_trace_id
from tracetap.paths import join_key

_POINT_ORDER = {TapSide.CLIENT_PROCESS: 0, TapSide.CLIENT_NIC: 1, TapSide.SERVER_NIC: 2, TapSide.SERVER_PROCESS: 3}
_HEADERS = ("x-request-id", "traceparent", "sw8")


def link_spans(spans: list[Span]) -> list[Span]:
    """Set parent_span_id and trace_id on each span (in place) and return them in (start, id) order."""
    ordered = sorted(spans, key=lambda s: (s.start_ns, s.span_id))
    by_id = {s.span_id: s for s in ordered}
    parent: dict[str, str] = {}

    # 2. the points of one request, client process first
    paths: dict[tuple[str, str], list[Span]] = defaultdict(list)
    for span in ordered:
        key = join_key(span)
        if key is not None:
            paths[key].append(span)
    for points in paths.values():
        chain = sorted({s.tap_side: s for s in reversed(points)}.values(), key=lambda s: _POINT_ORDER[s.tap_side])
        for upper, lower in zip(chain, chain[1:]):
            parent[lower.span_id] = upper.span_id

    parent.update(process_parents(ordered, parent))

    roots: dict[str, str] = {}
    for span in ordered:
        span.parent_span_id = parent.get(span.span_id)
        root, seen = span, {span.span_id}
        while True:  # up to the root; a cycle (impossible by construction, cheap to guard) stops the walk
            up = parent.get(root.span_id)
            if up is None or up in seen or up not in by_id:
                break
            seen.add(up)
            root = by_id[up]
        roots[span.span_id] = root.span_id
    incoming: dict[str, str] = {}  # root -> the trace id of the first W3C traceparent its spans carried: the caller's wins
    for span in ordered:
        header = w3c_trace_id(span.trace_headers.get("traceparent"))
        if header is not None:
            incoming.setdefault(roots[span.span_id], header)
    for span in ordered:
        root_id = roots[span.span_id]
        span.trace_id = incoming.get(root_id) or stable_id("trace", root_id)
    return ordered


def process_parents(ordered: list[Span], linked: dict[str, str] | set[str] = frozenset()) -> dict[str, str]:
    """Rules 1 and 3 within each process: client call -> the server span it was made while serving, for the
    calls in `ordered` ((start, id) order) that are not in `linked` already."""
    found: dict[str, str] = {}
    # 1. thread trace ids within a process: server span -> the client calls made while serving it
    servers: dict[tuple[str, int | None, int], Span] = {}
    for span in ordered:
        if span.tap_side is TapSide.SERVER_PROCESS and span.syscall_trace_id_request:
            servers.setdefault((span.host, span.pid, span.syscall_trace_id_request), span)
    for span in ordered:
        if span.tap_side is TapSide.CLIENT_PROCESS and span.syscall_trace_id_request and span.span_id not in linked:
            server = servers.get((span.host, span.pid, span.syscall_trace_id_request))
            if server is not None and server.start_ns <= span.start_ns:
                found[span.span_id] = server.span_id

    # 3. trace headers across thread hops in one process
    received: dict[tuple[str, int | None, str, str], Span] = {}
    for span in ordered:
        if span.tap_side is TapSide.SERVER_PROCESS:
            for name in _HEADERS:
                if name in span.trace_headers:
                    received.setdefault((span.host, span.pid, name, span.trace_headers[name]), span)
    for span in ordered:
        if span.tap_side is TapSide.CLIENT_PROCESS and span.span_id not in linked and span.span_id not in found:
            for name in _HEADERS:
                server = received.get((span.host, span.pid, name, span.trace_headers.get(name, "")))
                if server is not None and server.start_ns <= span.start_ns:
                    found[span.span_id] = server.span_id
                    break
    return found
