"""What a protocol module provides, and what its parsers return.

A parser reads one message from the start of a byte buffer and never raises: it answers with a
message, "need more bytes", or "not this protocol / malformed". `final` tells it no contiguous bytes
will follow (the capture cut the message), so it should return what it can read from the prefix.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple
from typing import Protocol as _Interface


class Status(enum.Enum):
    MESSAGE = "message"
    NEED_MORE = "need_more"
    MALFORMED = "malformed"


class ErrorClass(enum.StrEnum):
    """The L7Span schema's ErrorClass symbols."""

    CLIENT_ERROR = "CLIENT_ERROR"
    SERVER_ERROR = "SERVER_ERROR"
    TIMEOUT = "TIMEOUT"
    PROTOCOL_ERROR = "PROTOCOL_ERROR"


class Message(NamedTuple):
    """One request or response, as much as the captured bytes show (a NamedTuple: parsers make one per
    message, and a frozen dataclass costs three times as much to build)."""

    is_request: bool
    size: int | None  # whole message length in bytes (may exceed what was captured); None: unknown
    request_type: str | None = None  # HTTP method, DNS qtype, Redis command, SQL verb, Kafka API
    request_domain: str | None = None  # HTTP Host, DNS name
    request_resource: str | None = None  # HTTP path, DNS name, Redis key, SQL text (literals masked)
    response_code: int | None = None
    response_message: str | None = None
    error_class: ErrorClass | None = None
    pair_key: int | str | None = None  # responses pair with the request of the same key (DNS id); None: in order
    trace_headers: tuple[tuple[str, str], ...] = ()  # (lowercase name, value): traceparent, x-request-id, sw8
    attributes: tuple[tuple[str, str], ...] = ()
    expects_response: bool = True  # False for messages no answer follows (PostgreSQL Terminate, MySQL COM_QUIT)
    head: bytes = b""  # a response's first body bytes, for protocols that decode them once paired (see `finish`)
    protocol: str | None = None  # the span's protocol when it is not the connection's (gRPC on an HTTP/2 connection)
    cancelled: bool = False  # a client's message that withdraws its open request of the same pair key (HTTP/2 RST_STREAM)
    request_size: int | None = None  # a response that knows its whole request's size (an HTTP/2 body follows its HEADERS)
    # A response that may be bytes the server sends unasked before its answer (TLS 1.3's session tickets, which can
    # cross the first request): if more of the server's bytes follow after a pause, they are the answer instead.
    tentative: bool = False


class Parse(NamedTuple):
    status: Status
    message: Message | None = None
    reason: str | None = None  # why MALFORMED

    @property
    def ok(self) -> bool:
        return self.status is Status.MESSAGE


NEED_MORE = Parse(Status.NEED_MORE)


def malformed(reason: str) -> Parse:
    return Parse(Status.MALFORMED, reason=reason)


class L7Protocol(_Interface):
    """The seam for a new protocol: one module in tracetap/protocols/ with an object like this, registered
    in tracetap/protocols/__init__.py."""

    name: str  # the L7Protocol enum symbol in the schemas, e.g. "HTTP"
    symbols: tuple[str, ...]  # every L7Protocol symbol its spans carry (HTTP/2's: HTTP2 and GRPC); the schemas must have them
    ports: frozenset[int]  # well-known server ports (a hint, never required)
    # The secrets its bytes can carry: rules (tracetap/redact, `Rule`) the agents run on every captured payload
    # before it leaves the node, whichever way the bytes were cut into syscalls. Shared rules (SQL's) run once.
    redaction: tuple[Any, ...]

    def detect(self, first: bytes, port: int) -> bool:
        """Do these first bytes of a client's first message look like this protocol?"""

    def parse_request(self, data: bytes, final: bool) -> Parse: ...

    def parse_response(self, data: bytes, final: bool) -> Parse: ...

    # Optional: `endpoint(symbol, request_type, resource) -> str | None`, the low-cardinality endpoint of a span for RED
    # metrics (tracetap/endpoints.py); without one, the request type is the endpoint.
    #
    # Optional: `finish(request, response) -> Message` completes a response once paired, for protocols whose
    # responses only make sense next to their request (Kafka's error code position depends on the API).
    #
    # Optional, for protocols whose messages mean something only in their connection's state (HTTP/2: HPACK tables,
    # multiplexed streams): `session() -> session`, one per socket, and `session_from_state(list) -> session`. The
    # assembler passes every message its parsers found, in order, to `session.accept(message, from_client)`, which
    # returns the request or response it completes, or None; `session.lost()` is told when events were lost, and
    # `session.to_state()` gives JSON-ready data.
