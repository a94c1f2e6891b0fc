"""The kernel's event structs (mirrors of socket_trace.c) and their decoding into Avro records
for the raw socket-data and socket-lifecycle topics.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from schemas.serde import AVRO_NULL, AVRO_SOME, avro_bytes, avro_long
from tracetap.flow import Endpoint, flow_id

SYSCALLS = ("READ", "WRITE", "READV", "WRITEV", "RECVFROM", "SENDTO", "RECVMSG", "SENDMSG", "RECVMMSG", "SENDMMSG", "SSL_READ", "SSL_WRITE")
ROLES = ("UNKNOWN", "CLIENT", "SERVER")
DIRECTIONS = ("INGRESS", "EGRESS")
L4 = {6: "TCP", 17: "UDP"}
# include/net/tcp_states.h
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE",
              8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}
LC_STATE, LC_RETRANSMIT, LC_RESET_SENT, LC_RESET_RECEIVED, LC_RTT, LC_ACCEPT = 1, 2, 3, 4, 5, 6
COUNTERS = ("data_events", "data_lost", "lifecycle_lost", "filtered", "shed_events", "shed_requests", "loss_markers_lost",
            "unknown_protocol_events", "continuation_events", "tls_ciphertext_events", "tls_untied_calls")
SAMPLE_ALL = 0xFFFFFFFF  # the kernel's sampling threshold that captures every flow

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
        ("has_seq", ctypes.c_uint8), ("loss_generation", ctypes.c_uint8), ("sample_threshold", ctypes.c_uint32),
        ("socket_seq", ctypes.c_uint32), ("tls", ctypes.c_uint8), ("reserved", ctypes.c_uint8 * 3),
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
        ("protocol", ctypes.c_uint8), ("loss_generation", ctypes.c_uint8),
        ("laddr", ctypes.c_uint8 * 16), ("raddr", ctypes.c_uint8 * 16), ("comm", ctypes.c_char * 16),
    ]


# Where the payload starts in struct data_event: after comm, before ctypes' trailing padding.
DATA_HEADER_SIZE = DataEventHeader.comm.offset + DataEventHeader.comm.size
# The same layout for the hot path: one unpack beats a dozen ctypes attribute reads.
_DATA_HEADER = struct.Struct("<6Q3IiII3H6BIIB3x16s16s16s")
assert _DATA_HEADER.size == DATA_HEADER_SIZE, "struct data_event mirrors disagree"
PID_OFFSET = DataEventHeader.pid.offset
SOCKET_INO_OFFSET = DataEventHeader.socket_ino.offset
EXIT_NS_OFFSET = DataEventHeader.exit_ns.offset
SOCKET_SEQ_OFFSET = DataEventHeader.socket_seq.offset
PAYLOAD_LEN_OFFSET = DataEventHeader.payload_len.offset


_AVRO_DOUBLE = struct.Struct("<d")
_ALL_AVRO = _AVRO_DOUBLE.pack(1.0)


def sample_ratio(threshold: int) -> float:
    """The share of flows a kernel sampling threshold captures (flows whose client hash is below it)."""
    return 1.0 if threshold >= SAMPLE_ALL else max(threshold, 1) / 2**32


def sample_threshold(ratio: float) -> int:
    """The kernel threshold for a share of flows: the inverse of `sample_ratio`."""
    return SAMPLE_ALL if ratio >= 1.0 else max(0, min(SAMPLE_ALL - 1, int(ratio * 2**32)))


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


_CACHE_MAX = 65_536
# (stream key, captured payload, bytes the syscall moved) -> the payload to emit (redaction)
PayloadFilter = Callable[[tuple[int, ...], bytes, int], bytes]
SOCKET_DATA_FIELDS = ("host", "start_time", "end_time", "pid", "tid", "comm", "fd", "socket_id", "netns_inode", "direction",
                      "syscall", "bytes", "l4_protocol", "local_ip", "local_port", "remote_ip", "remote_port", "role",
                      "payload", "tcp_seq", "syscall_trace_id", "cgroup_id", "sample_ratio", "loss_generation")


class DataEventEncoder:
    """Raw `struct data_event` bytes (header + payload prefix) to a SocketDataEvent keyed by flow id.

    `encode` is the agent's hot path, written out by hand: one struct unpack, the payload through
    `payload_filter` (redaction), and the Avro body joined from cached pieces (host, comm, addresses,
    enum symbols), about 3x faster than a dict through fastavro. `record` gives the same event as a
    dict. The field order is checked against the schema here, and a test holds `encode` to fastavro.
    """

    def __init__(self, schema: dict[str, Any], host: str, clock: Clock, trace_prefix: int,
                 payload_filter: PayloadFilter | None = None) -> None:
        fields = {f["name"]: f["type"] for f in schema["fields"]}
        if tuple(fields) != SOCKET_DATA_FIELDS:
            raise ValueError(f"SocketDataEvent fields are now {tuple(fields)}: update DataEventEncoder to match")
        self._directions = _enum_bytes(fields["direction"], DIRECTIONS)
        self._syscalls = _enum_bytes(fields["syscall"], SYSCALLS + ("OTHER",) * (256 - len(SYSCALLS)))
        self._roles = _enum_bytes(fields["role"], ROLES + ("UNKNOWN",) * (256 - len(ROLES)))
        self._l4 = {name: avro_long(i) for i, name in enumerate(fields["l4_protocol"]["symbols"])}
        self._host = host
        self._host_avro = avro_bytes(host.encode())
        self._offset_ns = clock.offset_ns
        self._trace_base = trace_prefix << 40
        self._payload_filter = payload_filter
        self._endpoints: dict[tuple[Any, ...], _Endpoints] = {}
        self._comms: dict[bytes, tuple[str, bytes]] = {}
        self._threads: dict[tuple[Any, ...], bytes] = {}  # (socket, netns, pid, tid, fd, comm) -> their Avro

    def encode(self, raw: bytes) -> tuple[str, bytes, int]:
        (enter_ns, exit_ns, socket_ino, netns, trace_id, cgroup_id, pid, tid, fd, nbytes, seq, payload_len, family, lport, rport,
         direction, syscall, protocol, role, has_seq, loss_generation, threshold, _, tls, laddr, raddr, comm) = _DATA_HEADER.unpack_from(raw)
        payload = self._payload(raw, payload_len, socket_ino, pid, fd, direction | tls << 1, nbytes)
        # What one thread's calls on one socket share is encoded once: pid .. netns, and l4 .. role.
        thread = self._threads.get((socket_ino, netns, pid, tid, fd, comm))
        if thread is None:
            thread = self._thread_of(socket_ino, netns, pid, tid, fd, comm)
        ends = self._endpoints.get((family, protocol, laddr, lport, raddr, rport)) or self._endpoints_of(family, protocol, laddr, lport, raddr, rport)
        offset = self._offset_ns
        return ends.key, b"".join((
            self._host_avro, avro_long(enter_ns + offset), avro_long(exit_ns + offset), thread,
            self._directions[direction], self._syscalls[syscall], avro_long(nbytes), ends.avro, self._roles[role], avro_bytes(payload),
            AVRO_SOME + avro_long(seq) if has_seq else AVRO_NULL,
            AVRO_SOME + avro_long(self._trace_base | trace_id) if trace_id else AVRO_NULL,
            AVRO_SOME + avro_long(cgroup_id) if cgroup_id else AVRO_NULL,
            _ALL_AVRO if threshold == SAMPLE_ALL else _AVRO_DOUBLE.pack(sample_ratio(threshold)), avro_long(loss_generation),
        )), exit_ns + offset

    def _thread_of(self, socket_ino: int, netns: int, pid: int, tid: int, fd: int, comm: bytes) -> bytes:
        if len(self._threads) >= _CACHE_MAX:
            self._threads.clear()
        encoded = self._threads[(socket_ino, netns, pid, tid, fd, comm)] = b"".join((
            avro_long(pid), avro_long(tid), self._comm(comm)[1], avro_long(fd), avro_long(socket_ino), avro_long(netns)))
        return encoded

    def record(self, raw: bytes) -> tuple[str, dict[str, Any]]:
        (enter_ns, exit_ns, socket_ino, netns, trace_id, cgroup_id, pid, tid, fd, nbytes, seq, payload_len, family, lport, rport,
         direction, syscall, protocol, role, has_seq, loss_generation, threshold, _, tls, laddr, raddr, comm) = _DATA_HEADER.unpack_from(raw)
        ends = self._endpoints_of(family, protocol, laddr, lport, raddr, rport)
        return ends.key, {
            "host": self._host, "start_time": enter_ns + self._offset_ns, "end_time": exit_ns + self._offset_ns, "pid": pid,
            "tid": tid, "comm": self._comm(comm)[0], "fd": fd, "socket_id": socket_ino, "netns_inode": netns,
            "direction": DIRECTIONS[direction], "syscall": SYSCALLS[syscall] if syscall < len(SYSCALLS) else "OTHER",
            "bytes": nbytes, "l4_protocol": ends.l4, "local_ip": ends.local_ip, "local_port": lport, "remote_ip": ends.remote_ip,
            "remote_port": rport, "role": ROLES[role] if role < len(ROLES) else "UNKNOWN", "payload": self._payload(raw, payload_len, socket_ino, pid, fd, direction | tls << 1, nbytes),
            "tcp_seq": seq if has_seq else None, "syscall_trace_id": self._trace_base | trace_id if trace_id else None,
            "cgroup_id": cgroup_id or None, "sample_ratio": sample_ratio(threshold), "loss_generation": loss_generation,
        }

    def _payload(self, raw: bytes, payload_len: int, socket_ino: int, pid: int, fd: int, direction: int, nbytes: int) -> bytes:
        payload = raw[DATA_HEADER_SIZE:DATA_HEADER_SIZE + payload_len]
        if self._payload_filter is None or not (payload or nbytes):
            return payload
        # One stream per socket direction (TLS plaintext apart from the handshake's ciphertext): redaction carries
        # state from each event to the next.
        stream = (socket_ino, direction) if socket_ino else (pid, fd, direction)
        return self._payload_filter(stream, payload, nbytes)

    def _comm(self, comm: bytes) -> tuple[str, bytes]:
        known = self._comms.get(comm)
        if known is None:
            if len(self._comms) >= _CACHE_MAX:
                self._comms.clear()
            text = comm.split(b"\0", 1)[0].decode(errors="replace")
            known = self._comms[comm] = (text, avro_bytes(text.encode()))
        return known

    def _endpoints_of(self, family: int, protocol: int, laddr: bytes, lport: int, raddr: bytes, rport: int) -> _Endpoints:
        l4 = L4.get(protocol, "OTHER")
        local, remote = Endpoint(ip_text(family, laddr), lport), Endpoint(ip_text(family, raddr), rport)
        if len(self._endpoints) >= _CACHE_MAX:
            self._endpoints.clear()
        ends = _Endpoints(flow_id(l4, local, remote), l4, local.ip, remote.ip,
                          b"".join((self._l4[l4], avro_bytes(local.ip.encode()), avro_long(lport), avro_bytes(remote.ip.encode()), avro_long(rport))))
        self._endpoints[(family, protocol, laddr, lport, raddr, rport)] = ends
        return ends


class _Endpoints(NamedTuple):
    """What one connection's events share: computed once, then looked up by the raw tuple."""

    key: str
    l4: str
    local_ip: str
    remote_ip: str
    avro: bytes  # l4_protocol, local_ip, local_port, remote_ip, remote_port


def _enum_bytes(avro_enum: dict[str, Any], kernel_symbols: tuple[str, ...]) -> tuple[bytes, ...]:
    """Kernel value -> the Avro bytes of its symbol, whatever order the schema lists symbols in."""
    index = {symbol: avro_long(i) for i, symbol in enumerate(avro_enum["symbols"])}
    return tuple(index[symbol] for symbol in kernel_symbols)


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
        "loss_generation": event.loss_generation if closing else None,
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
