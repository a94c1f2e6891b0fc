"""The kernel's event structs (mirrors of socket_trace.c) and their decoding into Avro records
for the raw socket-data and socket-lifecycle topics.
"""

from __future__ import annotations

import ctypes
import errno
import socket
from dataclasses import dataclass
from typing import Any

from tracetap.flow import Endpoint, flow_id

SYSCALLS = ("READ", "WRITE", "READV", "WRITEV", "RECVFROM", "SENDTO", "RECVMSG", "SENDMSG", "RECVMMSG", "SENDMMSG")
ROLES = ("UNKNOWN", "CLIENT", "SERVER")
DIRECTIONS = ("INGRESS", "EGRESS")
L4 = {6: "TCP", 17: "UDP"}
# include/net/tcp_states.h
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE",
              8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}
LC_STATE, LC_RETRANSMIT, LC_RESET_SENT, LC_RESET_RECEIVED, LC_RTT, LC_ACCEPT = 1, 2, 3, 4, 5, 6
COUNTERS = ("data_events", "data_lost", "lifecycle_lost", "filtered")

_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


class DataEventHeader(ctypes.Structure):
    """struct data_event without its payload array."""

    _fields_ = [
        ("enter_ns", ctypes.c_uint64), ("exit_ns", ctypes.c_uint64), ("socket_ino", ctypes.c_uint64),
        ("netns", ctypes.c_uint64), ("trace_id", ctypes.c_uint64), ("cgroup_id", ctypes.c_uint64),
        ("pid", ctypes.c_uint32), ("tid", ctypes.c_uint32), ("fd", ctypes.c_uint32), ("bytes", ctypes.c_int32),
        ("seq", ctypes.c_uint32), ("payload_len", ctypes.c_uint32),
        ("family", ctypes.c_uint16), ("lport", ctypes.c_uint16), ("rport", ctypes.c_uint16),
        ("direction", ctypes.c_uint8), ("syscall", ctypes.c_uint8), ("protocol", ctypes.c_uint8), ("role", ctypes.c_uint8),
        ("has_seq", ctypes.c_uint8), ("pad", ctypes.c_uint8),
        ("laddr", ctypes.c_uint8 * 16), ("raddr", ctypes.c_uint8 * 16), ("comm", ctypes.c_char * 16),
    ]


class LifecycleEvent(ctypes.Structure):
    _fields_ = [
        ("ts_ns", ctypes.c_uint64), ("socket_ino", ctypes.c_uint64), ("netns", ctypes.c_uint64),
        ("bytes_acked", ctypes.c_uint64), ("bytes_received", ctypes.c_uint64),
        ("total_retrans", ctypes.c_uint32), ("srtt_us", ctypes.c_uint32), ("pid", ctypes.c_uint32), ("tid", ctypes.c_uint32),
        ("error", ctypes.c_int32),
        ("family", ctypes.c_uint16), ("lport", ctypes.c_uint16), ("rport", ctypes.c_uint16),
        ("kind", ctypes.c_uint8), ("oldstate", ctypes.c_uint8), ("newstate", ctypes.c_uint8), ("role", ctypes.c_uint8),
        ("protocol", ctypes.c_uint8), ("pad", ctypes.c_uint8),
        ("laddr", ctypes.c_uint8 * 16), ("raddr", ctypes.c_uint8 * 16), ("comm", ctypes.c_char * 16),
    ]


# Where the payload starts in struct data_event: after comm, before ctypes' trailing padding.
DATA_HEADER_SIZE = DataEventHeader.comm.offset + DataEventHeader.comm.size


@dataclass(frozen=True, slots=True)
class Clock:
    """Monotonic kernel time to wall clock: the offset is measured once, at start."""

    offset_ns: int

    @classmethod
    def now(cls) -> Clock:
        import time

        return cls(time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC))


def ip_text(family: int, raw: Any) -> str:
    data = bytes(raw)
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, data[:4])
    if data[:12] == _V4_MAPPED:  # a dual-stack socket talking IPv4: report it as IPv4, as the wire does
        return socket.inet_ntop(socket.AF_INET, data[12:16])
    return socket.inet_ntop(socket.AF_INET6, data)


def decode_data(header: DataEventHeader, payload: bytes, host: str, clock: Clock, trace_prefix: int) -> tuple[str, dict[str, Any]]:
    """(flow id key, SocketDataEvent record) for one data event."""
    l4 = L4.get(header.protocol, "OTHER")
    local = Endpoint(ip_text(header.family, header.laddr), header.lport)
    remote = Endpoint(ip_text(header.family, header.raddr), header.rport)
    record = {
        "host": host,
        "start_time": header.enter_ns + clock.offset_ns,
        "end_time": header.exit_ns + clock.offset_ns,
        "pid": header.pid,
        "tid": header.tid,
        "comm": header.comm.decode(errors="replace"),
        "fd": header.fd,
        "socket_id": header.socket_ino,
        "netns_inode": header.netns,
        "direction": DIRECTIONS[header.direction],
        "syscall": SYSCALLS[header.syscall] if header.syscall < len(SYSCALLS) else "OTHER",
        "bytes": header.bytes,
        "l4_protocol": l4,
        "local_ip": local.ip,
        "local_port": local.port,
        "remote_ip": remote.ip,
        "remote_port": remote.port,
        "role": ROLES[header.role] if header.role < len(ROLES) else "UNKNOWN",
        "payload": payload,
        "tcp_seq": header.seq if header.has_seq else None,
        "syscall_trace_id": (trace_prefix << 40) | header.trace_id if header.trace_id else None,
        "cgroup_id": header.cgroup_id or None,
    }
    return flow_id(l4, local, remote), record


def decode_lifecycle(event: LifecycleEvent, host: str, clock: Clock) -> tuple[str, dict[str, Any]]:
    """(flow id key, SocketLifecycleEvent record) for one lifecycle event."""
    l4 = L4.get(event.protocol, "OTHER")
    local = Endpoint(ip_text(event.family, event.laddr), event.lport)
    remote = Endpoint(ip_text(event.family, event.raddr), event.rport)
    kind = _lifecycle_kind(event)
    closing = event.kind == LC_STATE and event.newstate == 7
    record = {
        "host": host,
        "time": event.ts_ns + clock.offset_ns,
        "kind": kind,
        "pid": event.pid or None,
        "tid": event.tid or None,
        "comm": event.comm.decode(errors="replace") if event.pid else None,
        "socket_id": event.socket_ino or None,
        "netns_inode": event.netns or None,
        "l4_protocol": l4,
        "local_ip": local.ip,
        "local_port": local.port,
        "remote_ip": remote.ip,
        "remote_port": remote.port,
        "role": ROLES[event.role] if event.role < len(ROLES) else "UNKNOWN",
        "old_state": TCP_STATES.get(event.oldstate) if event.kind == LC_STATE else None,
        "new_state": TCP_STATES.get(event.newstate) if event.kind == LC_STATE else None,
        "error_code": event.error if kind == "CONNECT_FAILED" and event.error else None,
        "error_name": errno.errorcode.get(event.error) if kind == "CONNECT_FAILED" and event.error else None,
        "srtt_us": event.srtt_us if event.kind == LC_RTT else None,
        "bytes_sent": event.bytes_acked if closing else None,
        "bytes_received": event.bytes_received if closing else None,
        "retransmits": event.total_retrans if closing else None,
    }
    return flow_id(l4, local, remote), record


def _lifecycle_kind(event: LifecycleEvent) -> str:
    if event.kind == LC_ACCEPT:
        return "ACCEPT"
    if event.kind == LC_RETRANSMIT:
        return "RETRANSMIT"
    if event.kind == LC_RESET_SENT:
        return "RESET_SENT"
    if event.kind == LC_RESET_RECEIVED:
        return "RESET_RECEIVED"
    if event.kind == LC_RTT:
        return "RTT_SAMPLE"
    old, new = TCP_STATES.get(event.oldstate), TCP_STATES.get(event.newstate)
    if old == "SYN_SENT" and new == "ESTABLISHED":
        return "CONNECT"
    if old == "SYN_SENT" and new == "CLOSE":
        return "CONNECT_FAILED"
    if new == "CLOSE":
        return "CLOSE"
    return "STATE_CHANGE"
