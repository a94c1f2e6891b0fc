"""DNS over UDP (one message per datagram) and TCP (a 2-byte length before each message)."""

from __future__ import annotations

import re
import struct

from tracetap.protocols.base import NEED_MORE, ErrorClass, Message, Parse, Status, malformed

QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 35: "NAPTR",
          41: "OPT", 64: "SVCB", 65: "HTTPS", 255: "ANY"}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_HEADER = struct.Struct(">HHHHHH")
_MAX_LABELS = 128
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


class Dns:
    name = "DNS"
    symbols = ("DNS",)
    redaction = ()  # names and addresses are no secrets
    ports = frozenset({53, 5353})

    def __init__(self, over_tcp: bool = False) -> None:
        self.over_tcp = over_tcp

    def detect(self, first: bytes, port: int) -> bool:
        body = first[2:] if self.over_tcp else first
        if len(body) < 17:
            return False
        _, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(body)
        if flags & 0x8000 or (flags >> 11) & 0xF or qdcount != 1 or ancount or nscount:
            return False
        if port in self.ports:
            return True
        # Any other port: only a query whose one question ends exactly where the message (or its EDNS record) does.
        question = _name(body, 12, 0)
        if question is None or not all(_HOSTNAME.fullmatch(label) for label in question[0].split(".") if question[0] != "."):
            return False
        end = question[1] + 4
        qclass = struct.unpack_from(">H", body, question[1] + 2)[0] if len(body) >= end else None
        return qclass == 1 and (len(body) == end or (arcount == 1 and len(body) >= end + 11 and body[end] == 0))

    def parse_request(self, data: bytes, final: bool) -> Parse:
        return self._parse(data, final, request=True)

    def parse_response(self, data: bytes, final: bool) -> Parse:
        return self._parse(data, final, request=False)

    def _parse(self, data: bytes, final: bool, request: bool) -> Parse:
        offset = 0
        size: int | None = len(data)
        if self.over_tcp:
            if len(data) < 2:
                return NEED_MORE if not final else malformed("no DNS length prefix")
            size = 2 + struct.unpack_from(">H", data)[0]
            offset = 2
            if size < 14:
                return malformed(f"DNS length prefix {size - 2} is shorter than a DNS header")
            if len(data) < offset + 12:
                return NEED_MORE if not final else malformed("DNS header cut")
        if len(data) < offset + 12:
            return malformed(f"{len(data)} bytes is shorter than a DNS header")
        qid, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(data, offset)
        is_response = bool(flags & 0x8000)
        if is_response == request:
            return malformed("a DNS response where a query was expected" if request else "a DNS query where a response was expected")
        if (flags >> 11) & 0xF > 5:
            return malformed(f"DNS opcode {(flags >> 11) & 0xF} is not defined")
        name, qtype = None, None
        if qdcount:
            question = _name(data, offset + 12, offset)
            if question is None:
                if self.over_tcp and not final and size is not None and len(data) < size:
                    return NEED_MORE
                return malformed("DNS question name is not readable")
            name, end = question
            if len(data) >= end + 4:
                qtype = struct.unpack_from(">H", data, end)[0]
        rcode = flags & 0xF
        rcode_name = RCODES.get(rcode, f"RCODE{rcode}")
        error = None
        if not request and rcode:
            error = ErrorClass.SERVER_ERROR if rcode in (2, 4) else ErrorClass.CLIENT_ERROR
        return Parse(Status.MESSAGE, Message(
            is_request=request, size=size, request_type=QTYPES.get(qtype, f"TYPE{qtype}") if qtype is not None else None,
            request_domain=name, request_resource=name, response_code=None if request else rcode,
            response_message=None if request else rcode_name, error_class=error, pair_key=qid,
            attributes=(("dns.id", str(qid)),) + (() if request else (("dns.answers", str(ancount)),))))


def _name(data: bytes, offset: int, base: int) -> tuple[str, int] | None:
    """(dotted name, offset after it in the message) or None; follows compression pointers, bounded."""
    labels: list[str] = []
    end = None
    jumps = 0
    while len(labels) <= _MAX_LABELS:
        if offset >= len(data):
            return None
        length = data[offset]
        if length == 0:
            return ".".join(labels) or ".", end if end is not None else offset + 1
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data) or jumps > 16:
                return None
            if end is None:
                end = offset + 2
            offset = base + (((length & 0x3F) << 8) | data[offset + 1])
            jumps += 1
            continue
        if length & 0xC0 or offset + 1 + length > len(data):
            return None
        labels.append(data[offset + 1:offset + 1 + length].decode("ascii", errors="replace"))
        offset += 1 + length
    return None


DNS_UDP = Dns()
DNS_TCP = Dns(over_tcp=True)
