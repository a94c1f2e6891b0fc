"""NIC spans (tap sides c and s) from one flow's packet summaries at one tap point: the request packet
(an HTTP method or a DNS query tshark dissected) paired with the response packet (an HTTP status or a
DNS answer); the response's later segments extend the span's end.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from tracetap.endpoints import endpoint_of
from tracetap.errors import InvalidEvent
from tracetap.flow import Endpoint, flow_id
from tracetap.model import Span, TapSide

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


class FlowPacketAssembler:
    """Feed one flow's PacketSummary records at one tap point, in capture order."""

    def __init__(self, config: NicConfig = NicConfig()) -> None:
        self._config = config
        self._requests: deque[_Request] = deque()
        self._open: tuple[_Request, dict[str, Any], int, int] | None = None  # request, response packet, end_ns, bytes
        self._client: tuple[str, int] | None = None

    def add(self, p: dict[str, Any]) -> list[Span]:
        out: list[Span] = []
        is_request = p["http_method"] is not None or (p["dns_id"] is not None and p["dns_is_response"] is False)
        is_response = p["http_status"] is not None or (p["dns_id"] is not None and p["dns_is_response"] is True)
        if (is_request or is_response) and None in (p["src_ip"], p["src_port"], p["dst_ip"], p["dst_port"]):
            raise InvalidEvent("a request or response packet without its addresses and ports")  # its span would have no flow
        src = (p["src_ip"], p["src_port"])
        if is_request:
            self._client = src
            if self._open is not None:
                out.append(self._finish())
            self._requests.append(_Request(p, p["payload_bytes"]))
        elif is_response and self._requests:
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
        elif self._requests and src == self._client and p["payload_bytes"]:
            self._requests[-1].payload += p["payload_bytes"]  # more of the request
        if p["tcp_flags"] is not None and p["tcp_flags"] & (FIN | RST) and self._open is not None:
            out.append(self._finish())
        return out

    @property
    def idle(self) -> bool:
        return not self._requests and self._open is None

    @property
    def next_deadline_ns(self) -> int | None:
        """The watermark at which `expire` next has something to do (None: nothing open)."""
        deadlines = [self._open[2] + self._config.response_linger_ns] if self._open is not None else []
        if self._requests:
            deadlines.append(self._requests[0].packet["time"] + self._config.request_timeout_ns)
        return min(deadlines, default=None)

    def expire(self, watermark_ns: int) -> list[Span]:
        out = []
        if self._open is not None and self._open[2] + self._config.response_linger_ns <= watermark_ns:
            out.append(self._finish())
        while self._requests and self._requests[0].packet["time"] + self._config.request_timeout_ns <= watermark_ns:
            request = self._requests.popleft()
            out.append(self._span(request, None, request.packet["time"] + self._config.request_timeout_ns, 0, error="TIMEOUT"))
        return out

    def to_state(self) -> list[Any]:
        """JSON-ready data (the packets are PacketSummary records as decoded); `from_state` reads it back."""
        requests = [[r.packet, r.payload] for r in self._requests]
        opened = None if self._open is None else [[self._open[0].packet, self._open[0].payload], *self._open[1:]]
        return [requests, opened, None if self._client is None else list(self._client)]

    @classmethod
    def from_state(cls, state: list[Any], config: NicConfig) -> FlowPacketAssembler:
        requests, opened, client = state
        assembler = cls(config)
        assembler._requests = deque(_Request(packet, payload) for packet, payload in requests)
        if opened is not None:
            (packet, payload), response, end_ns, size = opened
            assembler._open = (_Request(packet, payload), response, end_ns, size)
        assembler._client = None if client is None else (client[0], client[1])
        return assembler

    def _pop(self, response: dict[str, Any]) -> _Request | None:
        if response["dns_id"] is not None:
            for i, request in enumerate(self._requests):
                if request.packet["dns_id"] == response["dns_id"]:
                    del self._requests[i]
                    return request
            return None
        return self._requests.popleft()

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
        client, server = Endpoint(q["src_ip"], q["src_port"]), Endpoint(q["dst_ip"], q["dst_port"])
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
