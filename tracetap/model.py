"""The core's records: raw socket data as the assembler reads it, and the L7 span it produces.

Times are integers in nanoseconds. `from_record` / `to_record` convert at the edge from and to the
Avro records of the schemas (SocketDataEvent, L7Span), so engines hand dicts in and out.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from tracetap.errors import InvalidEvent, UndecodableState


class TapSide(enum.StrEnum):
    """DeepFlow's four points: c-p, c, s, s-p (the TapSide enum of the schemas)."""

    CLIENT_PROCESS = "CLIENT_PROCESS"
    CLIENT_NIC = "CLIENT_NIC"
    SERVER_NIC = "SERVER_NIC"
    SERVER_PROCESS = "SERVER_PROCESS"


_TLS_CALLS = frozenset({"SSL_READ", "SSL_WRITE"})


class SocketData(NamedTuple):
    """One syscall's data on one socket (a SocketDataEvent); a NamedTuple, as one is built per event."""

    host: str
    start_ns: int
    end_ns: int
    pid: int
    tid: int
    comm: str
    socket_id: int
    egress: bool
    byte_count: int
    l4_protocol: str
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    role: str  # CLIENT, SERVER, UNKNOWN
    payload: bytes
    tcp_seq: int | None
    syscall_trace_id: int | None
    sample_ratio: float = 1.0  # the share of flows the agent captured when this exchange started
    loss_generation: int = 0  # the socket's lost-event count in the kernel: a change means events are missing
    tls: bool = False  # TLS plaintext (SSL_READ, SSL_WRITE): OpenSSL's calls, not the socket's ciphertext syscalls

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> SocketData:
        """The event of a SocketDataEvent record; InvalidEvent for one no capture can produce."""
        if len(r["payload"]) > max(r["bytes"], 0):
            raise InvalidEvent(f"payload of {len(r['payload'])} bytes, longer than the {r['bytes']} bytes the syscall moved")
        if not 0 <= r["start_time"] <= r["end_time"] < 2**62:  # 2**62 ns: 2116; a time plus a timeout stays within a long
            raise InvalidEvent(f"start_time {r['start_time']} and end_time {r['end_time']} are not in order within 0..2**62 ns")
        ratio = r.get("sample_ratio", 1.0)
        if not 0.0 < ratio <= 1.0:  # counts are scaled by 1 / ratio
            raise InvalidEvent(f"sample_ratio {ratio} is not within (0, 1]")
        return cls(r["host"], r["start_time"], r["end_time"], r["pid"], r["tid"], r["comm"], r["socket_id"], r["direction"] == "EGRESS",
                   r["bytes"], r["l4_protocol"], r["local_ip"], r["local_port"], r["remote_ip"], r["remote_port"], r["role"],
                   r["payload"], r["tcp_seq"], r["syscall_trace_id"], ratio, r.get("loss_generation", 0), r.get("syscall") in _TLS_CALLS)

    @property
    def crossed_ns(self) -> int:
        """When the bytes crossed the socket: a write's entry, a read's return (it may have waited for them)."""
        return self.start_ns if self.egress else self.end_ns

    @property
    def socket_key(self) -> str:
        return f"{self.host}|{self.pid}|{self.socket_id}"


@dataclass(slots=True)
class Span:
    """One request and its response at one tap point (an L7Span record)."""

    protocol: str
    tap_side: TapSide
    host: str
    start_ns: int
    end_ns: int
    flow_id: str
    l4_protocol: str
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    request_type: str | None = None
    request_domain: str | None = None
    request_resource: str | None = None
    endpoint: str | None = None
    response_code: int | None = None
    response_message: str | None = None
    error_class: str | None = None
    connection_closed: bool = False
    request_bytes: int = 0
    response_bytes: int = 0
    req_tcp_seq: int | None = None
    resp_tcp_seq: int | None = None
    syscall_trace_id_request: int | None = None
    syscall_trace_id_response: int | None = None
    pid: int | None = None
    tid: int | None = None
    comm: str | None = None
    client_workload: str | None = None
    server_workload: str | None = None
    trace_headers: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)
    trace_id: str | None = None
    parent_span_id: str | None = None
    sample_ratio: float = 1.0  # the share of flows captured when the request was made: the span stands for 1 / ratio
    identity: str = ""  # what makes the span unique at its tap point (socket or flow); part of span_id
    given_id: str | None = None  # the id of a span read from a topic (`from_record`): an agent's span keeps its id downstream
    tls: bool = False  # its bytes were TLS on the wire (plaintext from the OpenSSL probes, or TLS records at a NIC)
    _id: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def span_id(self) -> str:
        """A W3C-sized span id (8 bytes, lowercase hex), deterministic: the same input gives the same id in every
        engine and on every replay. Computed once:
        the fields it covers are set at construction (copy with dataclasses.replace to change them)."""
        if self._id is None:
            self._id = self.given_id or stable_id(self.host, self.tap_side, self.identity, self.start_ns, self.req_tcp_seq,
                                                  self.request_type, size=8)
        return self._id

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Span:
        """The span of an L7Span record, as an agent assembled it on the node (`tracetap.raw.spans`), before linking:
        its id is kept, the trace it was linked into is not. InvalidEvent for one no agent produces."""
        if not 0 <= r["start_time"] <= r["end_time"] < 2**62:
            raise InvalidEvent(f"start_time {r['start_time']} and end_time {r['end_time']} are not in order within 0..2**62 ns")
        ratio = r.get("sample_ratio", 1.0)
        if not 0.0 < ratio <= 1.0:
            raise InvalidEvent(f"sample_ratio {ratio} is not within (0, 1]")
        if r["request_bytes"] < 0 or r["response_bytes"] < 0:
            raise InvalidEvent(f"request_bytes {r['request_bytes']} or response_bytes {r['response_bytes']} is negative")
        headers = {name: r[field_name] for name, field_name in _HEADER_FIELDS.items() if r.get(field_name) is not None}
        return cls(
            protocol=r["protocol"], tap_side=TapSide(r["tap_side"]), host=r["host"], start_ns=r["start_time"], end_ns=r["end_time"],
            flow_id=r["flow_id"], l4_protocol=r["l4_protocol"], client_ip=r["client_ip"], client_port=r["client_port"],
            server_ip=r["server_ip"], server_port=r["server_port"], request_type=r["request_type"], request_domain=r["request_domain"],
            request_resource=r["request_resource"], endpoint=r["endpoint"], response_code=r["response_code"],
            response_message=r["response_message"], error_class=r["error_class"], connection_closed=r["connection_closed"],
            request_bytes=r["request_bytes"], response_bytes=r["response_bytes"], req_tcp_seq=r["req_tcp_seq"],
            resp_tcp_seq=r["resp_tcp_seq"], syscall_trace_id_request=r["syscall_trace_id_request"],
            syscall_trace_id_response=r["syscall_trace_id_response"], pid=r["pid"], tid=r["tid"], comm=r["comm"],
            client_workload=r["client_workload"], server_workload=r["server_workload"], trace_headers=headers,
            attributes=dict(r["attributes"]), sample_ratio=ratio, given_id=r["span_id"], tls=r.get("tls", False))

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def to_record(self) -> dict[str, Any]:
        return {
            "span_id": self.span_id, "trace_id": self.trace_id, "parent_span_id": self.parent_span_id, "protocol": self.protocol,
            "tap_side": str(self.tap_side), "host": self.host, "start_time": self.start_ns, "end_time": self.end_ns,
            "duration_ns": self.duration_ns, "flow_id": self.flow_id, "l4_protocol": self.l4_protocol,
            "client_ip": self.client_ip, "client_port": self.client_port, "server_ip": self.server_ip, "server_port": self.server_port,
            "client_workload": self.client_workload, "server_workload": self.server_workload, "pid": self.pid, "tid": self.tid,
            "comm": self.comm, "request_type": self.request_type, "request_domain": self.request_domain,
            "request_resource": self.request_resource, "endpoint": self.endpoint, "response_code": self.response_code,
            "response_message": self.response_message, "error_class": self.error_class, "connection_closed": self.connection_closed,
            "request_bytes": self.request_bytes, "response_bytes": self.response_bytes, "req_tcp_seq": self.req_tcp_seq,
            "resp_tcp_seq": self.resp_tcp_seq, "syscall_trace_id_request": self.syscall_trace_id_request,
            "syscall_trace_id_response": self.syscall_trace_id_response,
            **{name: self.trace_headers.get(header) for header, name in _HEADER_FIELDS.items()},
            "attributes": dict(self.attributes), "sample_ratio": self.sample_ratio, "tls": self.tls,
        }


_HEADER_FIELDS = {"traceparent": "traceparent", "x-request-id": "x_request_id", "sw8": "sw8"}  # trace header -> L7Span field
_SPAN_FIELDS = tuple(f.name for f in fields(Span) if f.init)
_OPTIONAL_INTS = frozenset({"response_code", "req_tcp_seq", "resp_tcp_seq", "syscall_trace_id_request", "syscall_trace_id_response",
                            "pid", "tid"})
_INTS = frozenset({"start_ns", "end_ns", "client_port", "server_port", "request_bytes", "response_bytes"})
_MAPS = frozenset({"trace_headers", "attributes"})
_RATIO_AT = _SPAN_FIELDS.index("sample_ratio")  # state written before sampling existed lacks it (and given_id)


def span_to_state(span: Span) -> list[Any]:
    """The span as JSON-ready data: its fields in declaration order (the cached id is recomputed)."""
    return [getattr(span, name) for name in _SPAN_FIELDS]


def span_from_state(state: list[Any]) -> Span:
    """The span of `span_to_state`; UndecodableState for anything else (every field's type is checked: the
    state may come from a topic)."""
    if isinstance(state, list) and len(state) == len(_SPAN_FIELDS) - 3:
        state = [*state[:_RATIO_AT], 1.0, *state[_RATIO_AT:]]
    if isinstance(state, list) and len(state) == len(_SPAN_FIELDS) - 2:  # written before spans came from agents
        state = [*state, None]
    if isinstance(state, list) and len(state) == len(_SPAN_FIELDS) - 1:  # written before TLS
        state = [*state, False]
    if not isinstance(state, list) or len(state) != len(_SPAN_FIELDS):
        raise UndecodableState(f"a span is a list of {len(_SPAN_FIELDS)} fields, not {type(state).__name__}")
    for name, value in zip(_SPAN_FIELDS, state):
        if name == "sample_ratio":
            ok = type(value) in (float, int) and 0 < value <= 1
        elif name in _INTS:
            ok = type(value) is int
        elif name in _OPTIONAL_INTS:
            ok = value is None or type(value) is int
        elif name in _MAPS:
            ok = isinstance(value, dict) and all(type(k) is str and type(v) is str for k, v in value.items())
        elif name in ("connection_closed", "tls"):
            ok = type(value) is bool
        elif name in ("protocol", "host", "flow_id", "l4_protocol", "client_ip", "server_ip", "identity", "tap_side"):
            ok = type(value) is str
        else:
            ok = value is None or type(value) is str
        if not ok:
            raise UndecodableState(f"span field {name}: {type(value).__name__} {str(value)[:40]!r} is not of its type")
    span = Span(*state)
    try:
        span.tap_side = TapSide(span.tap_side)
    except ValueError:
        raise UndecodableState(f"span field tap_side: {span.tap_side[:40]!r} is not a tap side") from None
    return span


def stable_id(*parts: object, size: int = 16) -> str:
    """A lowercase hex id of `size` bytes (16: a W3C trace id; 8: a W3C span id) from the parts' text:
    deterministic across processes and engines (no hash seed)."""
    return hashlib.blake2b("|".join("" if p is None else str(p) for p in parts).encode(), digest_size=size).hexdigest()


def w3c_trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), or None when it is not one."""
    if not traceparent or len(traceparent) < 55:
        return None
    parts = traceparent.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    trace = parts[1]
    if parts[0] == "ff" or trace == "0" * 32 or parts[2] == "0" * 16 or not all(c in "0123456789abcdef" for c in "".join(parts[:4])):
        return None
    return trace
