"""NIC spans (tap sides c and s) from one flow's packets at one tap point, two ways.

`FlowPayloadAssembler` (the packet agent in-collector, its default): the packets' payloads go through the same
protocol modules and socket assembly as the eBPF agent's syscalls, so every protocol the core parses is decoded at
the NIC as at the process, each by its own module. `FlowPacketAssembler` (packet summaries on raw.packets, which
carry no payload): the request packet (an HTTP method or a DNS query tshark dissected) paired with the response
packet (an HTTP status or a DNS answer); the response's later segments extend the span's end.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import Any


from tracetap.assembly import AssemblyConfig, SocketAssembler
from tracetap.endpoints import endpoint_of
from tracetap.errors import InvalidEvent
from tracetap.flow import Endpoint, flow_id
from tracetap.model import SocketData, Span, TapSide

FIN, RST = 0x01, 0x04


@dataclass(frozen=True, slots=True)
class NicConfig:
    request_timeout_ns: int = 30_000_000_000
    response_linger_ns: int = 1_000_000_000  # response segments later than this after the last one end the span


def tap_side_of(tap_point: str) -> TapSide:
    """`server-nic` (or any label naming the server) is s; every other tap point is read as the client's c."""
    return TapSide.SERVER_NIC if "server" in tap_point else TapSide.CLIENT_NIC


@dataclass(slots=True)
class _Request:
    packet: dict[str, Any]
    payload: int
    paired: bool = False  # answered by DNS id: left in the arrival-order queue until it reaches the head


def check_packet(p: dict[str, Any]) -> None:
    """Refuse a record no capture produces: an HTTP or DNS request or response without its addresses and ports
    (its span would have no flow). The stage checks before its assembler sees the record."""
    l7 = p["http_method"] is not None or p["http_status"] is not None or p["dns_id"] is not None
    if l7 and None in (p["src_ip"], p["src_port"], p["dst_ip"], p["dst_port"]):
        raise InvalidEvent("a request or response packet without its addresses and ports")


class FlowPacketAssembler:
    """Feed one flow's PacketSummary records at one tap point, in capture order."""

    def __init__(self, config: NicConfig = NicConfig()) -> None:
        self._config = config
        self._requests: deque[_Request] = deque()  # in arrival order; answered DNS queries are skipped at the head
        self._by_dns_id: dict[int, deque[_Request]] = {}  # the unanswered queries, by id: pairing stays linear
        self._unanswered = 0
        self._last: _Request | None = None  # the latest request, which a client's further segments extend
        self._open: tuple[_Request, dict[str, Any], int, int] | None = None  # request, response packet, end_ns, bytes
        self._client: tuple[str, int] | None = None
        self.abandoned = 0  # requests unanswered when capture ended (`abandon`)

    def add(self, p: dict[str, Any]) -> list[Span]:
        out: list[Span] = []
        is_request = p["http_method"] is not None or (p["dns_id"] is not None and p["dns_is_response"] is False)
        is_response = p["http_status"] is not None or (p["dns_id"] is not None and p["dns_is_response"] is True)
        src = (p["src_ip"], p["src_port"])
        if is_request:
            self._client = src
            if self._open is not None:
                out.append(self._finish())
            self._queue(_Request(p, p["payload_bytes"]))
        elif is_response and self._unanswered:
            if self._open is not None:
                out.append(self._finish())
            request = self._pop(p)
            if request is not None:
                self._open = (request, p, p["time"], p["payload_bytes"])
                if p["dns_id"] is not None and p["l4_protocol"] == "UDP":  # one datagram is the whole answer
                    out.append(self._finish())
        elif self._open is not None and src != self._client and p["payload_bytes"]:
            request, response, _, size = self._open
            self._open = (request, response, p["time"], size + p["payload_bytes"])  # more of the response
        elif self._last is not None and not self._last.paired and src == self._client and p["payload_bytes"]:
            self._last.payload += p["payload_bytes"]  # more of the request
        if p["tcp_flags"] is not None and p["tcp_flags"] & (FIN | RST) and self._open is not None:
            out.append(self._finish())
        return out

    @property
    def idle(self) -> bool:
        return not self._unanswered and self._open is None

    @property
    def next_deadline_ns(self) -> int | None:
        """The watermark at which `expire` next has something to do (None: nothing open)."""
        deadlines = [self._open[2] + self._config.response_linger_ns] if self._open is not None else []
        oldest = self._oldest()
        if oldest is not None:
            deadlines.append(oldest.packet["time"] + self._config.request_timeout_ns)
        return min(deadlines, default=None)

    def expire(self, watermark_ns: int) -> list[Span]:
        out = []
        if self._open is not None and self._open[2] + self._config.response_linger_ns <= watermark_ns:
            out.append(self._finish())
        while (request := self._oldest()) is not None and request.packet["time"] + self._config.request_timeout_ns <= watermark_ns:
            self._pop_oldest()
            out.append(self._span(request, None, request.packet["time"] + self._config.request_timeout_ns, 0, error="TIMEOUT"))
        return out

    def abandon(self) -> list[Span]:
        """Capture ends here (the agent stops), not the flow: a response in progress ends as captured, and requests
        still unanswered are dropped and counted in `abandoned`, not reported as timeouts."""
        out = [self._finish()] if self._open is not None else []
        self.abandoned += self._unanswered
        self._requests.clear()
        self._by_dns_id.clear()
        self._unanswered, self._last = 0, None
        return out

    def to_state(self) -> list[Any]:
        """JSON-ready data (the packets are PacketSummary records as decoded); `from_state` reads it back.
        Answered queries still queued are left out."""
        requests = [[r.packet, r.payload] for r in self._requests if not r.paired]
        opened = None if self._open is None else [[self._open[0].packet, self._open[0].payload], *self._open[1:]]
        last_open = self._last is not None and not self._last.paired
        return [requests, opened, None if self._client is None else list(self._client), last_open]

    @classmethod
    def from_state(cls, state: list[Any], config: NicConfig) -> FlowPacketAssembler:
        requests, opened, client, last_open = state
        assembler = cls(config)
        for packet, payload in requests:
            assembler._queue(_Request(packet, payload))  # rebuilds the DNS id index and the unanswered count
        if not last_open:
            assembler._last = None  # the latest request was answered: later client segments extend nothing
        if opened is not None:
            (packet, payload), response, end_ns, size = opened
            assembler._open = (_Request(packet, payload, paired=True), response, end_ns, size)
        assembler._client = None if client is None else (client[0], client[1])
        return assembler

    def _queue(self, request: _Request) -> None:
        self._requests.append(request)
        self._unanswered += 1
        self._last = request
        dns_id = request.packet["dns_id"]
        if dns_id is not None:
            self._by_dns_id.setdefault(dns_id, deque()).append(request)

    def _oldest(self) -> _Request | None:
        while self._requests and self._requests[0].paired:
            self._requests.popleft()
        return self._requests[0] if self._requests else None

    def _pop_oldest(self) -> _Request | None:
        request = self._oldest()
        if request is None:
            return None
        self._requests.popleft()
        request.paired = True
        self._unanswered -= 1
        dns_id = request.packet["dns_id"]
        if dns_id is not None:  # every older query is answered, so this one heads its id's queue
            self._forget(dns_id)
        return request

    def _forget(self, dns_id: int) -> _Request:
        queue = self._by_dns_id[dns_id]
        request = queue.popleft()
        if not queue:
            del self._by_dns_id[dns_id]
        return request

    def _pop(self, response: dict[str, Any]) -> _Request | None:
        if response["dns_id"] is None:
            return self._pop_oldest()
        if response["dns_id"] not in self._by_dns_id:
            return None
        request = self._forget(response["dns_id"])
        request.paired = True
        self._unanswered -= 1
        return request

    def _finish(self) -> Span:
        assert self._open is not None
        request, response, end_ns, size = self._open
        self._open = None
        status = response["http_status"]
        if status is not None:
            error = "SERVER_ERROR" if status >= 500 else "CLIENT_ERROR" if status >= 400 else None
        else:
            rcode = response["dns_rcode"]
            error = None if rcode in (None, "NOERROR") else "SERVER_ERROR" if rcode in ("SERVFAIL", "NOTIMP") else "CLIENT_ERROR"
        return self._span(request, response, end_ns, size, error)

    def _span(self, request: _Request, response: dict[str, Any] | None, end_ns: int, response_bytes: int, error: str | None) -> Span:
        q = request.packet
        http = q["http_method"] is not None
        # a summary without addresses (nothing tshark dissected) still makes a span, as the flow key does
        client, server = Endpoint(q["src_ip"] or "", q["src_port"] or 0), Endpoint(q["dst_ip"] or "", q["dst_port"] or 0)
        protocol = "HTTP" if http else "DNS"
        request_type = q["http_method"] if http else q["dns_query_type"]
        resource = q["http_uri"].split("?", 1)[0] if http and q["http_uri"] else q["dns_query_name"]
        attributes = {} if http else {"dns.id": str(q["dns_id"])}
        if response is not None and not http and response["dns_answer_count"] is not None:
            attributes["dns.answers"] = str(response["dns_answer_count"])
        flow = flow_id(q["l4_protocol"], client, server)
        return Span(
            protocol=protocol, tap_side=tap_side_of(q["tap_point"]), host=q["host"], start_ns=q["time"], end_ns=max(end_ns, q["time"]),
            flow_id=flow, l4_protocol=q["l4_protocol"], client_ip=client.ip, client_port=client.port, server_ip=server.ip,
            server_port=server.port, request_type=request_type, request_domain=q["http_host"] if http else q["dns_query_name"],
            request_resource=resource, endpoint=endpoint_of(protocol, request_type, resource),
            response_code=None if response is None else (response["http_status"] if http else _rcode(response["dns_rcode"])),
            response_message=None if response is None or http else response["dns_rcode"], error_class=error,
            request_bytes=request.payload, response_bytes=response_bytes, req_tcp_seq=q["tcp_seq"],
            resp_tcp_seq=None if response is None else response["tcp_seq"], attributes=attributes,
            client_workload=q["workload"] if tap_side_of(q["tap_point"]) is TapSide.CLIENT_NIC else None,
            server_workload=q["workload"] if tap_side_of(q["tap_point"]) is TapSide.SERVER_NIC else None,
            identity=f"{q['interface']}|{q['tap_point']}|{flow}",
        )


_RCODES = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5}


def _rcode(name: str | None) -> int | None:
    return _RCODES.get(name) if name else None


class FlowPayloadAssembler:
    """One flow's packets at one tap point, their payloads read as the eBPF agent's syscalls are: a socket whose
    local end is the flow's first sender (the client when the capture saw the SYN; else the protocol's detection
    tells), each packet one event in its direction with its TCP sequence number. Retransmitted bytes are skipped;
    bytes the capture never saw are a loss, after which the socket assembly resynchronises. A FIN or RST closes it."""

    def __init__(self, config: AssemblyConfig = AssemblyConfig()) -> None:
        self._socket = SocketAssembler(config)
        self._tap: dict[str, Any] | None = None  # the first packet's addresses and tap point
        self._next_seq: dict[bool, int] = {}  # per direction (egress: from the first sender), the sequence number expected next
        self._losses = 0
        self._closed = False
        self.abandoned = 0

    def add(self, p: dict[str, Any]) -> list[Span]:
        if self._tap is None:
            self._tap = {k: p[k] for k in ("host", "interface", "tap_point", "workload", "l4_protocol", "src_ip", "src_port", "dst_ip", "dst_port")}
        egress = (p["src_ip"], p["src_port"]) == (self._tap["src_ip"], self._tap["src_port"])
        payload: bytes = p.get("payload") or b""
        size = p["payload_bytes"] if p["l4_protocol"] == "TCP" else len(payload)
        seq = p["tcp_seq"]
        out: list[Span] = []
        if size > 0 and not self._closed:
            if seq is not None:
                expected = self._next_seq.get(egress)
                behind = 0 if expected is None else (expected - seq) % 2**32
                if 0 < behind < 2**31:  # bytes seen already: a retransmission, in whole or in part
                    if behind >= size:
                        return out
                    payload, size, seq = payload[behind:], size - behind, expected
                elif expected is not None and seq != expected:  # bytes the capture never saw: what is open is incomplete
                    self._losses += 1
                self._next_seq[egress] = (seq + size) % 2**32
            out += self._socket.add(self._event(p["time"], egress, payload[:size], size, seq))
        if p["tcp_flags"] is not None and p["tcp_flags"] & (FIN | RST) and not self._closed:
            self._closed = True
            out += self._socket.close(p["time"])
        return self._nic(out)

    def expire(self, watermark_ns: int) -> list[Span]:
        return self._nic(self._socket.expire(watermark_ns))

    def abandon(self) -> list[Span]:
        before = self._socket.counters.abandoned
        spans = self._nic(self._socket.abandon())
        self.abandoned += self._socket.counters.abandoned - before
        return spans

    @property
    def idle(self) -> bool:
        return self._socket.idle

    @property
    def next_deadline_ns(self) -> int | None:
        return self._socket.next_deadline_ns

    def to_state(self) -> list[Any]:
        """JSON-ready data; `from_state` reads it back."""
        return [self._socket.to_state(), self._tap, [[egress, seq] for egress, seq in self._next_seq.items()], self._losses, self._closed,
                self.abandoned]

    @classmethod
    def from_state(cls, state: list[Any], config: AssemblyConfig) -> FlowPayloadAssembler:
        socket, tap, next_seq, losses, closed, abandoned = state
        assembler = cls(config)
        assembler._socket = SocketAssembler.from_state(socket, config)
        assembler._tap, assembler._losses, assembler._closed, assembler.abandoned = tap, losses, closed, abandoned
        assembler._next_seq = {bool(egress): seq for egress, seq in next_seq}
        return assembler

    def _event(self, time_ns: int, egress: bool, payload: bytes, size: int, seq: int | None) -> SocketData:
        t = self._tap
        assert t is not None
        return SocketData(t["host"], time_ns, time_ns, 0, 0, "", 0, egress, size, t["l4_protocol"], t["src_ip"] or "", t["src_port"] or 0,
                          t["dst_ip"] or "", t["dst_port"] or 0, "UNKNOWN", payload, seq, None, 1.0, self._losses)

    def _nic(self, spans: list[Span]) -> list[Span]:
        """The socket assembly's spans as this tap point's: its side, workload and identity, no process."""
        if not spans:
            return spans
        t = self._tap
        assert t is not None
        side = tap_side_of(t["tap_point"])
        return [dataclasses.replace(span, tap_side=side, pid=None, tid=None, comm=None, syscall_trace_id_request=None,
                                    syscall_trace_id_response=None, identity=f"{t['interface']}|{t['tap_point']}|{span.flow_id}",
                                    client_workload=t["workload"] if side is TapSide.CLIENT_NIC else None,
                                    server_workload=t["workload"] if side is TapSide.SERVER_NIC else None)
                for span in spans]
