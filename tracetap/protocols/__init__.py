"""The protocol registry: which parsers exist, per transport, in detection order.

To add a protocol, write one module here with an object following `base.L7Protocol`, add it to
REGISTRY below, and give it tests (real bytes from a real client and server), and seeds for the fuzz
tests in tests/unit/test_parser_fuzz.py (tests/record_parser_seeds.py; a parser never raises and is linear).
"""

from __future__ import annotations

from tracetap.protocols.base import L7Protocol
from tracetap.protocols.dns import DNS_TCP, DNS_UDP
from tracetap.protocols.http1 import HTTP1
from tracetap.protocols.http2 import HTTP2
from tracetap.protocols.kafka import KAFKA
from tracetap.protocols.mysql import MYSQL
from tracetap.protocols.postgres import POSTGRES
from tracetap.protocols.redis import REDIS
from tracetap.protocols.tls import TLS

# Detection order matters only for bytes two protocols could both claim; the stricter check goes first. Every
# detector reads structure, on any port and mid-connection (benchmarks/detection.py measures what each claims of
# random bytes, TLS and the other protocols' recorded conversations). HTTP/2 frames (a run of them, each plausible)
# go before the length-prefixed binary protocols, whose looser checks a frame header once passed (an HTTP/2 frame
# on stream 9 read as a Kafka Produce request header). TLS (record headers that tile the bytes) goes first of all.
REGISTRY: dict[str, tuple[L7Protocol, ...]] = {
    "TCP": (TLS, HTTP1, HTTP2, POSTGRES, MYSQL, KAFKA, REDIS, DNS_TCP),
    "UDP": (DNS_UDP,),
}


def detect(l4_protocol: str, first: bytes, server_port: int) -> L7Protocol | None:
    """The protocol of a conversation from its client's first bytes; the server port breaks ties."""
    candidates = REGISTRY.get(l4_protocol, ())
    for protocol in candidates:  # a port that names a protocol wins when its parser agrees
        if server_port in protocol.ports and protocol.detect(first, server_port):
            return protocol
    for protocol in candidates:
        if protocol.detect(first, server_port):
            return protocol
    return None


def all_protocols() -> list[L7Protocol]:
    return [p for protocols in REGISTRY.values() for p in protocols]
