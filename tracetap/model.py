"""The core's records: raw socket data as the assembler reads it, and the L7 span it produces.

Times are integers in nanoseconds. `from_record` / `to_record` convert at the edge from and to the
Avro records of the schemas (SocketDataEvent, L7Span), so engines hand dicts in and out.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class TapSide(enum.StrEnum):
    """DeepFlow's four points: c-p, c, s, s-p (the TapSide enum of the schemas)."""

    CLIENT_PROCESS = "CLIENT_PROCESS"
    CLIENT_NIC = "CLIENT_NIC"
    SERVER_NIC = "SERVER_NIC"
    SERVER_PROCESS = "SERVER_PROCESS"


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

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> SocketData:
        return cls(r["host"], r["start_time"], r["end_time"], r["pid"], r["tid"], r["comm"], r["socket_id"], r["direction"] == "EGRESS",
                   r["bytes"], r["l4_protocol"], r["local_ip"], r["local_port"], r["remote_ip"], r["remote_port"], r["role"],
                   r["payload"], r["tcp_seq"], r["syscall_trace_id"])

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
    identity: str = ""  # what makes the span unique at its tap point (socket or flow); part of span_id
    _id: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def span_id(self) -> str:
        """Deterministic: the same input gives the same id in every engine and on every replay. Computed once:
        the fields it covers are set at construction (copy with dataclasses.replace to change them)."""
        if self._id is None:
            self._id = stable_id(self.host, self.tap_side, self.identity, self.start_ns, self.req_tcp_seq, self.request_type)
        return self._id

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
            "syscall_trace_id_response": self.syscall_trace_id_response, "traceparent": self.trace_headers.get("traceparent"),
            "x_request_id": self.trace_headers.get("x-request-id"), "sw8": self.trace_headers.get("sw8"),
            "attributes": dict(self.attributes),
        }


def stable_id(*parts: object) -> str:
    """A 128-bit hex id from the parts' text: deterministic across processes and engines (no hash seed)."""
    return hashlib.blake2b("|".join("" if p is None else str(p) for p in parts).encode(), digest_size=16).hexdigest()
