"""HTTP/2 (RFC 9113) in cleartext (h2c; TLS reaches the core as plaintext through the TLS hooks), and gRPC.

Each frame is one message to the assembler: its size is the 9-byte header plus its length, so frames split
across syscalls or packed several to a syscall are read as any length-framed protocol. What a frame means
depends on the connection: each direction's HPACK dynamic table (RFC 7541) and which streams are open. That
state is a `Session`, one per socket, which the assembler hands every frame in order (`accept`):
- a client's HEADERS that opens a stream is the request, keyed by its stream id (`:method`, `:path`,
  `:authority`, trace headers);
- the server frame that ends that stream (END_STREAM, or RST_STREAM) is its response: `:status`, and for gRPC
  `grpc-status` and `grpc-message` from the trailers, with the bytes of every frame the server sent on it;
- a client's RST_STREAM withdraws its request (a cancelled call);
- every other frame (SETTINGS, PING, WINDOW_UPDATE, DATA before the end...) only updates the state.

Header blocks are decoded field by field with hpack's tables, integers and Huffman decoder rather than its
`Decoder`: a capture that starts mid-connection does not know the dynamic table the peers built, and redaction
may have masked a Huffman-coded value. hpack's Decoder raises at the first such field and loses the block and
the table; here that field is unknown, the others are kept, the table stays in step, and the span says so
(attribute `http2.headers`: `partial`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpack.exceptions import HPACKError
from hpack.hpack import decode_integer
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from tracetap.endpoints import route
from tracetap.protocols.base import NEED_MORE, ErrorClass, Message, Parse, Status, malformed
from tracetap.protocols.http1 import TRACE_HEADERS
from tracetap.redact import http as redact_http
from tracetap.redact import http2 as redact_http2

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x01, 0x04, 0x08, 0x20
_DEFINED_FLAGS = {DATA: 0x09, HEADERS: 0x2D, PRIORITY: 0, RST_STREAM: 0, SETTINGS: 0x01, PUSH_PROMISE: 0x0C, PING: 0x01,
                  GOAWAY: 0, WINDOW_UPDATE: 0, CONTINUATION: 0x04}
_BLOCK_FRAMES = (HEADERS, PUSH_PROMISE, CONTINUATION)
_KEPT = frozenset({HEADERS, PUSH_PROMISE, CONTINUATION, SETTINGS, RST_STREAM})  # frames whose payload `accept` reads
_SETTINGS_HEADER_TABLE_SIZE = 0x1
_MAX_TABLE_BYTES = 64 * 1024  # a peer may announce more; the table kept here is bounded (lookups are linear in it)
_MAX_BLOCK_BYTES = 256 * 1024  # a header block spread over CONTINUATION frames, kept until END_HEADERS
_MAX_OPEN_STREAMS = 4096  # streams a client opened that are still unanswered, per connection
_MAX_VALUE_CHARS = 8192

ERROR_CODES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR", 4: "SETTINGS_TIMEOUT",
               5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR",
               10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM", 12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}
GRPC_STATUS = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
               6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 10: "ABORTED",
               11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED"}
# gRPC codes that say the caller's request, credentials or own cancellation failed it; the others are the server's.
GRPC_CLIENT_ERRORS = frozenset({1, 3, 5, 6, 7, 9, 11, 16})
GRPC_TIMEOUT = 4  # DEADLINE_EXCEEDED


def frame_header(data: bytes, at: int = 0) -> tuple[int, int, int, int]:
    """(length, type, flags, stream id) of the frame header at `at` (9 bytes must be there)."""
    return (int.from_bytes(data[at:at + 3], "big"), data[at + 3], data[at + 4],
            int.from_bytes(data[at + 5:at + 9], "big") & 0x7FFF_FFFF)


def plausible(length: int, kind: int, flags: int, stream_id: int, reserved: bool = False) -> bool:
    """A frame header as an HTTP/2 peer writes it (RFC 9113 section 6): a defined type, only its flags, the
    stream (or none) its type requires, and the fixed lengths of the fixed-length types."""
    allowed = _DEFINED_FLAGS.get(kind)
    if allowed is None or flags & ~allowed or reserved:
        return False
    if kind in (SETTINGS, PING, GOAWAY):
        if stream_id:
            return False
        if kind == SETTINGS:
            return length % 6 == 0 and not (flags & 0x01 and length)  # an ACK is empty
        return length == 8 if kind == PING else length >= 8
    if kind == WINDOW_UPDATE:
        return length == 4
    if not stream_id:
        return False
    if kind == RST_STREAM:
        return length == 4
    if kind == PRIORITY:
        return length == 5
    if kind in (DATA, HEADERS):
        return bool(stream_id & 1) or kind == DATA  # a client opens odd streams; DATA may also flow on a pushed (even) one
    return True


# The largest frame a peer may send before SETTINGS raise it (RFC 9113 6.5.2), which senders keep to in practice.
# Detection asks for it: a TLS record header read as a frame header says some 1.3 MB.
DEFAULT_MAX_FRAME = 16_384


def frames_chain(data: bytes) -> bool:
    """Do these bytes start at a frame and hold plausible frames end to end (the last may be cut)?"""
    at, frames = 0, 0
    while at + 9 <= len(data):
        length, kind, flags, stream_id = frame_header(data, at)
        if length > DEFAULT_MAX_FRAME or not plausible(length, kind, flags, stream_id, bool(data[at + 5] & 0x80)):
            return False
        frames += 1
        at += 9 + length
    return frames > 0


class Http2:
    name = "HTTP2"
    symbols = ("HTTP2", "GRPC")  # a stream whose content-type is application/grpc is a GRPC span
    redaction = (redact_http.scans, redact_http2.scans)  # bodies in DATA frames, header blocks
    ports: frozenset[int] = frozenset()  # h2c runs on any port (gRPC's 50051 is a convention, not a rule)

    def endpoint(self, symbol: str, method: str | None, path: str | None) -> str | None:
        if symbol == "GRPC":  # the full method name, /package.Service/Method, is already low-cardinality
            return path or method
        return route(method, path)

    def detect(self, first: bytes, port: int) -> bool:
        """The client's connection preface, or (a capture that starts mid-connection) a run of plausible frames."""
        if first[:14] == PREFACE[:14]:
            return True
        return frames_chain(first)

    def server_first(self, first: bytes) -> bool:
        """Mid-connection, were these bytes written by the server? A HEADERS block that starts with `:status`."""
        if len(first) < 10 or first[3] != HEADERS:
            return False
        at = 9 + (1 if first[4] & PADDED else 0) + (5 if first[4] & PRIORITY_FLAG else 0)
        if at >= len(first):
            return False
        b = first[at]
        return 0x88 <= b <= 0x8E or b & 0xCF == 0x08 or b == 0x48  # :status indexed, or a literal with its name

    def parse_request(self, data: bytes, final: bool) -> Parse:
        if data[:1] == b"P":
            if data.startswith(PREFACE):
                return Parse(Status.MESSAGE, Message(is_request=True, size=len(PREFACE), expects_response=False, head=PREFACE))
            if PREFACE.startswith(data) and not final:
                return NEED_MORE
            return malformed("not the HTTP/2 connection preface")
        return _frame(data, final, True)

    def parse_response(self, data: bytes, final: bool) -> Parse:
        return _frame(data, final, False)

    def session(self) -> Session:
        return Session()

    def session_from_state(self, state: list[Any]) -> Session:
        return Session.from_state(state)


def _frame(data: bytes, final: bool, is_request: bool) -> Parse:
    """One frame, its payload kept only for the types `accept` reads (a DATA frame's is counted, not copied)."""
    if len(data) < 9:
        return NEED_MORE if not final else malformed("HTTP/2 frame header cut")
    length, kind = int.from_bytes(data[:3], "big"), data[3]
    size = 9 + length
    return Parse(Status.MESSAGE, Message(is_request=is_request, size=size, head=data[:size] if kind in _KEPT else data[:9]))


@dataclass(slots=True)
class _Table:
    """One direction's HPACK dynamic table, and a header block waiting for its CONTINUATION frames. After a start
    mid-connection or a loss, the entries seen since are known and an index beyond them is unknown."""

    table: HeaderTable = field(default_factory=HeaderTable)
    block: bytearray | None = None  # a header block waiting for its CONTINUATION frames
    block_stream: int = 0
    block_flags: int = 0
    block_kind: int = 0
    block_cut: bool = False


@dataclass(slots=True)
class _Stream:
    """A stream the client opened: its request, and the server's side of it so far."""

    grpc: bool
    status: int | None = None
    grpc_status: str | None = None
    grpc_message: str | None = None
    content_type: str | None = None
    response_bytes: int = 0
    partial: bool = False
    request_bytes: int = 0  # every frame the client wrote on it: HEADERS, DATA, trailers, WINDOW_UPDATE…


class Session:
    """One connection's HTTP/2 state (see the module docstring); JSON-ready through `to_state`."""

    def __init__(self) -> None:
        self._tables = {True: _Table(), False: _Table()}  # keyed by "written by the client"
        self._streams: dict[int, _Stream] = {}

    def accept(self, message: Message, from_client: bool) -> Message | None:
        """The frame's meaning: a request, a response, a cancellation, or None (state only)."""
        head = message.head
        if head == PREFACE or len(head) < 9:
            return None
        length, kind, flags, stream_id = frame_header(head)
        size = message.size or 9 + length
        payload = head[9:]
        cut = len(payload) < length
        table = self._tables[from_client]
        if table.block is not None and kind != CONTINUATION:  # the block's CONTINUATION never came: its fields are lost
            table.block = None
        if kind in _BLOCK_FRAMES:
            return self._block(table, kind, flags, stream_id, payload, cut, size, from_client)
        if from_client and stream_id in self._streams:  # every frame the client writes on its open stream
            self._streams[stream_id].request_bytes += size
        if kind == DATA:
            if not from_client and stream_id in self._streams:
                self._streams[stream_id].response_bytes += size
                if flags & END_STREAM:
                    return self._response(stream_id, size)
            return None
        if kind == RST_STREAM and stream_id in self._streams and len(payload) >= 4:
            code = int.from_bytes(payload[:4], "big")
            if from_client:
                del self._streams[stream_id]
                return Message(is_request=True, size=size, pair_key=stream_id, cancelled=True,
                               response_message=f"cancelled by the client (RST_STREAM {ERROR_CODES.get(code, code)})")
            return self._response(stream_id, size, reset=code)
        if kind == SETTINGS and not flags & 0x01:  # a peer's HEADER_TABLE_SIZE bounds the table of the blocks it receives
            for at in range(0, len(payload) - 5, 6):
                if int.from_bytes(payload[at:at + 2], "big") == _SETTINGS_HEADER_TABLE_SIZE:
                    limit = min(int.from_bytes(payload[at + 2:at + 6], "big"), _MAX_TABLE_BYTES)
                    other = self._tables[not from_client].table
                    if other.maxsize > limit:
                        other.maxsize = limit
        return None

    def lost(self) -> None:
        """Frames of this connection were lost: what the tables hold can no longer be trusted, nor what is open."""
        for table in self._tables.values():
            table.table = HeaderTable()
            table.block = None
        self._streams.clear()

    # header blocks ------------------------------------------------------------------------------------
    def _block(self, table: _Table, kind: int, flags: int, stream_id: int, payload: bytes, cut: bool, size: int,
               from_client: bool) -> Message | None:
        if kind == CONTINUATION:
            if table.block is None or stream_id != table.block_stream:
                return None
            table.block += payload
            table.block_cut |= cut
            if len(table.block) > _MAX_BLOCK_BYTES:
                table.block = None
                return None
            if not flags & END_HEADERS:
                return None
            block, kind, flags, cut = bytes(table.block), table.block_kind, table.block_flags, table.block_cut
            table.block = None
        else:
            start, end = 0, len(payload)
            if flags & PADDED and kind != CONTINUATION:
                if not payload:
                    return None
                start = 1
                if not cut:
                    end -= payload[0]
            if kind == HEADERS and flags & PRIORITY_FLAG:
                start += 5
            if kind == PUSH_PROMISE:
                start += 4
            block = payload[start:max(end, start)]
            if not flags & END_HEADERS and not cut:
                table.block, table.block_stream, table.block_flags, table.block_kind, table.block_cut = (
                    bytearray(block), stream_id, flags, kind, False)
                return None
        fields, complete = _decode(table, block)
        partial = cut or not complete
        if kind == PUSH_PROMISE:
            return None
        if from_client:
            if stream_id in self._streams or not stream_id & 1:
                return None  # trailers of a request, or a frame of a stream the client did not open
            return self._request(stream_id, fields, partial, size)
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        stream.response_bytes += size
        stream.partial |= partial
        status = fields.get(b":status")
        if status is not None and stream.status is None:
            code = _int(status)
            if code is not None and 100 <= code < 200 and code != 101:
                stream.response_bytes -= size  # an interim response (100 Continue) precedes the real one
                return None
            stream.status = code
            stream.content_type = _text(fields.get(b"content-type"))
        if b"grpc-status" in fields:
            stream.grpc_status = _text(fields.get(b"grpc-status"))
            stream.grpc_message = _text(fields.get(b"grpc-message"))
        if flags & END_STREAM:
            return self._response(stream_id, 0)
        return None

    def _request(self, stream_id: int, fields: dict[bytes, bytes | None], partial: bool, size: int) -> Message:
        if len(self._streams) >= _MAX_OPEN_STREAMS:  # the oldest unanswered stream is forgotten (its request times out)
            del self._streams[next(iter(self._streams))]
        content_type = _text(fields.get(b"content-type")) or ""
        grpc = content_type.startswith("application/grpc")
        path = _text(fields.get(b":path"))
        self._streams[stream_id] = _Stream(grpc=grpc, partial=partial, request_bytes=size)
        attributes = [("http2.stream_id", str(stream_id))]
        parts = path.split("/") if grpc and path else ()
        if len(parts) == 3 and not parts[0] and parts[1] and parts[2]:  # /package.Service/Method
            attributes += [("grpc.service", parts[1]), ("grpc.method", parts[2])]
        if partial:
            attributes.append(("http2.headers", "partial"))
        trace = tuple((name.decode("latin-1"), _text(value) or "") for name, value in fields.items()
                      if value is not None and name.decode("latin-1") in TRACE_HEADERS)
        return Message(is_request=True, size=size, request_type=_text(fields.get(b":method")),
                       request_domain=_text(fields.get(b":authority")) or _text(fields.get(b"host")),
                       request_resource=path.split("?", 1)[0] if path else None, pair_key=stream_id,
                       trace_headers=trace, attributes=tuple(attributes), protocol="GRPC" if grpc else "HTTP2")

    def _response(self, stream_id: int, size: int, reset: int | None = None) -> Message:
        stream = self._streams.pop(stream_id)
        stream.response_bytes += size
        attributes = []
        code, text, error = stream.status, None, _http_error(stream.status)
        grpc = stream.grpc or stream.grpc_status is not None or (stream.content_type or "").startswith("application/grpc")
        if grpc:
            attributes.append(("http.status", str(stream.status)))
            grpc_code = _int(stream.grpc_status)
            if grpc_code is not None:
                code, text = grpc_code, stream.grpc_message or GRPC_STATUS.get(grpc_code)
                error = (None if not grpc_code else ErrorClass.TIMEOUT if grpc_code == GRPC_TIMEOUT
                         else ErrorClass.CLIENT_ERROR if grpc_code in GRPC_CLIENT_ERRORS else ErrorClass.SERVER_ERROR)
            elif reset is None:  # a call that ended without its status: the server broke gRPC's protocol
                text, error = "no grpc-status", error or ErrorClass.SERVER_ERROR
        if reset is not None:
            name = ERROR_CODES.get(reset, str(reset))
            attributes.append(("http2.reset", name))
            if error is None and (reset or stream.status is None):  # NO_ERROR after a whole response only stops an upload
                text, error = f"RST_STREAM {name}", ErrorClass.SERVER_ERROR
        if stream.partial:
            attributes.append(("http2.headers", "partial"))
        return Message(is_request=False, size=stream.response_bytes, pair_key=stream_id, response_code=code,
                       response_message=text, error_class=error, attributes=tuple(attributes), protocol="GRPC" if grpc else "HTTP2",
                       request_size=stream.request_bytes)

    # state --------------------------------------------------------------------------------------------
    def to_state(self) -> list[Any]:
        tables = []
        for from_client in (True, False):
            t = self._tables[from_client]
            tables.append([[[n.decode("latin-1"), v.decode("latin-1")] for n, v in t.table.dynamic_entries], t.table.maxsize,
                           None if t.block is None else t.block.decode("latin-1"), t.block_stream, t.block_flags, t.block_kind, t.block_cut])
        streams = [[sid, s.grpc, s.status, s.grpc_status, s.grpc_message, s.content_type, s.response_bytes, s.partial, s.request_bytes]
                   for sid, s in self._streams.items()]
        return [tables, streams]

    @classmethod
    def from_state(cls, state: list[Any]) -> Session:
        tables, streams = state
        session = cls()
        for from_client, (entries, maxsize, block, stream, flags, kind, cut) in zip((True, False), tables):
            t = session._tables[from_client]
            t.table.maxsize = maxsize
            for name, value in reversed(entries):  # oldest first, so the newest ends up at the front
                t.table.add(name.encode("latin-1"), value.encode("latin-1"))
            t.block = None if block is None else bytearray(block.encode("latin-1"))
            t.block_stream, t.block_flags, t.block_kind, t.block_cut = stream, flags, kind, cut
        for sid, *rest in streams:
            session._streams[sid] = _Stream(*rest)
        return session


def _decode(table: _Table, block: bytes) -> tuple[dict[bytes, bytes | None], bool]:
    """The block's fields (first value per name; None: a value that could not be decoded), and whether every field
    was decoded. Linear in the block: each representation consumes its bytes once."""
    fields: dict[bytes, bytes | None] = {}
    complete = True
    view = memoryview(block)
    at = 0
    headers = table.table
    try:
        while at < len(block):
            first = block[at]
            if first & 0x80:  # indexed field
                index, used = decode_integer(view[at:], 7)
                at += used
                name, value = _entry(table, index)
                if name is None:
                    complete = False
                else:
                    fields.setdefault(name, value)
                continue
            if first & 0xE0 == 0x20:  # dynamic table size update
                size, used = decode_integer(view[at:], 5)
                at += used
                headers.maxsize = min(size, _MAX_TABLE_BYTES)
                continue
            indexing = first & 0xC0 == 0x40
            index, used = decode_integer(view[at:], 6 if indexing else 4)
            at += used
            if index:
                name, _ = _entry(table, index)
            else:
                name, at = _string(view, at)
            value, at = _string(view, at)
            if name is None or value is None:
                complete = False
            if name is not None:
                fields.setdefault(name.lower(), value)
            if indexing:  # an entry whose name or value is unknown still takes its place: later indexes stay right
                headers.add(name if name is not None else b"", value if value is not None else b"")
    except (HPACKError, IndexError, ValueError):  # a block cut by the capture, or not HPACK at all
        complete = False
    return fields, complete


def _entry(table: _Table, index: int) -> tuple[bytes | None, bytes | None]:
    """A table entry; (None, None) for one the capture never saw (an empty name marks an entry of unknown name)."""
    if not index:
        return None, None
    if index > HeaderTable.STATIC_TABLE_LENGTH + len(table.table.dynamic_entries):
        return None, None
    name, value = table.table.get_by_index(index)
    return (name, value) if name else (None, None)


def _string(view: memoryview, at: int) -> tuple[bytes | None, int]:
    """An HPACK string literal at `at`: (its bytes, or None if its Huffman code does not decode; position after)."""
    huffman = view[at] & 0x80
    length, used = decode_integer(view[at:], 7)
    start = at + used
    if start + length > len(view):
        raise IndexError("string literal cut")
    raw = view[start:start + length].tobytes()
    if huffman:
        try:
            raw = decode_huffman(raw)
        except (HPACKError, IndexError, ValueError, KeyError):  # masked by redaction, or not Huffman at all
            return None, start + length
    return raw, start + length


def _text(value: bytes | None) -> str | None:
    return None if value is None else value[:_MAX_VALUE_CHARS].decode("latin-1")


def _int(value: str | bytes | None) -> int | None:
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else None


def _http_error(status: int | None) -> ErrorClass | None:
    if status is None or status < 400:
        return None
    return ErrorClass.SERVER_ERROR if status >= 500 else ErrorClass.CLIENT_ERROR


HTTP2 = Http2()
