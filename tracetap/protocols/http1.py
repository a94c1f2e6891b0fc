"""HTTP/1.0 and 1.1: requests and responses with content-length, chunked or close-delimited bodies,
keep-alive and pipelining (each message's size says where the next one starts)."""

from __future__ import annotations

import re

from tracetap.endpoints import route
from tracetap.protocols.base import NEED_MORE, ErrorClass, Message, Parse, Status, malformed
from tracetap.redact import http as redact_http

METHODS = frozenset({b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE"})
TRACE_HEADERS = frozenset({"traceparent", "x-request-id", "sw8"})
_MAX_HEADER_BYTES = 64 * 1024
# Linear on any start line: one bounded quantifier each, over a class the next literal cannot match.
_REQUEST_LINE = re.compile(rb"([A-Z]{3,7}) (\S{1,8192}) HTTP/1\.([01])\r?$")
_CUT_REQUEST_LINE = re.compile(rb"([A-Z]{3,7}) (\S{1,8192})")  # a start line the capture cut short
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9]{2})(?: ([^\r\n]*))?\r?$")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_MAX_LENGTH_DIGITS = 18  # a body of 10**18 bytes is no real message; longer numbers are malformed, not parsed


class Http1:
    name = "HTTP"
    symbols = ("HTTP",)
    redaction = (redact_http.scans,)
    ports = frozenset({80, 8080, 8000, 8081, 8443, 3000, 5000, 9000})

    def endpoint(self, symbol: str, method: str | None, path: str | None) -> str:
        return route(method, path)

    def detect(self, first: bytes, port: int) -> bool:
        space = first.find(b" ", 0, 8)
        return space > 2 and first[:space] in METHODS

    def parse_request(self, data: bytes, final: bool) -> Parse:
        head = _head(data, final)
        if isinstance(head, Parse):
            return head
        start_line, header_block, header_bytes, complete = head
        match = _REQUEST_LINE.match(start_line) or (None if complete or header_block else _CUT_REQUEST_LINE.match(start_line))
        if not match or match[1] not in METHODS:
            return malformed(f"not an HTTP request line: {start_line[:60]!r}")
        headers = _headers(header_block)
        method, target = match[1].decode(), match[2].decode("latin-1")
        path = target.split("?", 1)[0]
        if path.startswith(("http://", "https://")):  # absolute form, as proxies receive
            path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
        size = _body_end(data, header_bytes, headers, complete) if complete else None
        if isinstance(size, Parse):
            return size
        return Parse(Status.MESSAGE, Message(
            is_request=True, size=size, request_type=method, request_domain=headers.get("host"), request_resource=path,
            trace_headers=tuple((k, v) for k, v in headers.items() if k in TRACE_HEADERS)))

    def parse_response(self, data: bytes, final: bool) -> Parse:
        head = _head(data, final)
        if isinstance(head, Parse):
            return head
        start_line, header_block, header_bytes, complete = head
        match = _STATUS_LINE.match(start_line)
        if not match:
            return malformed(f"not an HTTP status line: {start_line[:60]!r}")
        status = int(match[2])
        headers = _headers(header_block)
        if status < 200 and status != 101:  # 1xx interim responses precede the real one
            size: int | None | Parse = header_bytes if complete else None
        elif status in (204, 304):
            size = header_bytes if complete else None
        else:
            size = _body_end(data, header_bytes, headers, complete, until_close=True) if complete else None
        if isinstance(size, Parse):
            return size
        error = ErrorClass.SERVER_ERROR if status >= 500 else ErrorClass.CLIENT_ERROR if status >= 400 else None
        return Parse(Status.MESSAGE, Message(
            is_request=False, size=size, response_code=status, response_message=(match[3] or b"").decode("latin-1") or None,
            error_class=error, trace_headers=tuple((k, v) for k, v in headers.items() if k in TRACE_HEADERS)))


def _head(data: bytes, final: bool) -> tuple[bytes, bytes, int, bool] | Parse:
    """(start line, header lines, bytes up to the body, whether the header block is complete)."""
    end = data.find(b"\r\n\r\n", 0, _MAX_HEADER_BYTES)
    if end == -1:
        if len(data) >= _MAX_HEADER_BYTES:
            return malformed("no end of headers within 64 KiB")
        if not final:
            if data.find(b"\n") == -1 and len(data) > 8200:
                return malformed("start line too long")
            return NEED_MORE
        end = data.rfind(b"\r\n")  # a cut prefix: the complete lines are still worth reading
        if end == -1:
            if len(data) > 8200 or b" " not in data:
                return malformed("the captured prefix ends inside the start line")
            return data, b"", len(data), False
        block, header_bytes, complete = data[:end], len(data), False
    else:
        block, header_bytes, complete = data[:end], end + 4, True
    line_end = block.find(b"\r\n")
    if line_end == -1:
        return block, b"", header_bytes, complete
    return block[:line_end], block[line_end + 2:], header_bytes, complete


# Only the headers a span uses are read, found with C-speed searches in the lowercased block.
_WANTED = tuple((name, b"\n" + name.encode() + b":") for name in
                ("host", "content-length", "transfer-encoding", "traceparent", "x-request-id", "sw8"))


def _headers(block: bytes) -> dict[str, str]:
    lower = b"\n" + block.lower()
    headers: dict[str, str] = {}
    for name, needle in _WANTED:
        at = lower.find(needle)
        if at == -1:
            continue
        start = at + len(needle) - 1  # in `block`, which `lower` leads by one byte
        end = block.find(b"\n", start)
        headers[name] = block[start:end if end != -1 else len(block)].strip().decode("latin-1")
    return headers


def _body_end(data: bytes, header_bytes: int, headers: dict[str, str], complete: bool, until_close: bool = False) -> int | None | Parse:
    """Where the message ends: header + body length; None when only the connection's close says."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _chunked_end(data, header_bytes)
    length = headers.get("content-length")
    if length is not None:
        # str.isdigit accepts non-ASCII digits ('\xb2') that int() refuses: only ASCII digits, and not too many
        if not 0 < len(length) <= _MAX_LENGTH_DIGITS or not length.isascii() or not length.isdigit():
            return malformed(f"content-length {length[:20]!r} is not a number of at most {_MAX_LENGTH_DIGITS} digits")
        return header_bytes + int(length)
    return None if until_close else header_bytes


def _chunked_end(data: bytes, offset: int) -> int | None:
    """End of a chunked body when the captured bytes reach it; None when they do not."""
    while True:  # an explicit scan: each chunk-size line is read once
        line_end = data.find(b"\r\n", offset)
        digits = offset
        while digits < line_end and digits - offset < 16 and data[digits] in _HEX_DIGITS:
            digits += 1
        if line_end == -1 or digits == offset:
            return None
        size = int(data[offset:digits], 16)
        offset = line_end + 2 + size + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", line_end)
            return trailer_end + 4 if trailer_end != -1 else None
        if offset > len(data):
            return None


HTTP1 = Http1()
