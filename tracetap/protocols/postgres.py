"""PostgreSQL frontend/backend protocol v3: a request is a simple Query, or an extended-query run
(Parse/Bind/Describe/Execute up to Sync), or the startup; its response runs to ReadyForQuery ('Z')."""

from __future__ import annotations

import struct

from tracetap.protocols.base import NEED_MORE, ErrorClass, Message, Parse, Status, malformed
from tracetap.protocols.sql import looks_like_sql, mask_sql, sql_verb
from tracetap.redact import postgres as redact_postgres
from tracetap.redact import sql as redact_sql

_FRONTEND = frozenset(b"QPBDESCHFXfdcp")
_BACKEND = frozenset(b"RSKZTDCEIN123nstGHWAcdV")
_PROTOCOL_3 = 196608
_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104
_MAX_MESSAGE = 1 << 30
# SQLSTATE classes that mean the server or its environment failed, not the request.
_SERVER_CLASSES = ("08", "53", "57", "58", "XX")


class Postgres:
    name = "POSTGRESQL"
    symbols = ("POSTGRESQL",)
    redaction = (redact_sql.scans, redact_postgres.scans)
    ports = frozenset({5432})

    def detect(self, first: bytes, port: int) -> bool:
        if len(first) >= 8:
            length, code = struct.unpack_from(">ii", first)
            if (code == _PROTOCOL_3 and 8 < length < 10_000) or (length == 8 and code in (_SSL_REQUEST, _GSS_REQUEST)):
                return True
        if _frontend_run(first):  # mid-connection, on any port
            return True
        return port in self.ports and len(first) >= 5 and first[0] in b"QP" and 4 <= struct.unpack_from(">i", first, 1)[0] < _MAX_MESSAGE

    def parse_request(self, data: bytes, final: bool) -> Parse:
        if len(data) < 5:
            return NEED_MORE if not final else malformed("PostgreSQL message cut")
        if data[0] not in _FRONTEND:  # untyped: startup, SSL or GSS request
            if len(data) < 8:
                return NEED_MORE if not final else malformed("PostgreSQL startup message cut")
            length, code = struct.unpack_from(">ii", data)
            if length == 8 and code in (_SSL_REQUEST, _GSS_REQUEST):
                return Parse(Status.MESSAGE, Message(is_request=True, size=8, request_type="SSL_REQUEST" if code == _SSL_REQUEST else "GSS_REQUEST"))
            if code == _PROTOCOL_3 and 8 < length < 10_000:
                return Parse(Status.MESSAGE, Message(is_request=True, size=length, request_type="STARTUP"))
            return malformed(f"{data[:1]!r} is not a PostgreSQL frontend message")
        offset, statement = 0, None
        while True:
            if offset + 5 > len(data):
                return NEED_MORE if not final else self._cut(statement)
            kind = data[offset]
            length = struct.unpack_from(">i", data, offset + 1)[0]
            if kind not in _FRONTEND or not 4 <= length < _MAX_MESSAGE:
                return malformed(f"not a PostgreSQL frontend message at byte {offset}")
            body = data[offset + 5:offset + 1 + length]
            if kind == ord("Q"):
                statement = body.split(b"\0", 1)[0]
            elif kind == ord("P"):
                statement = body.split(b"\0", 2)[1] if body.count(b"\0") >= 2 else body.partition(b"\0")[2]
            end = offset + 1 + length
            if kind in b"QSXp":
                if end > len(data) and kind != ord("Q"):
                    return NEED_MORE if not final else self._cut(statement)
                return self._request(statement, end, kind)
            if end > len(data):
                return NEED_MORE if not final else self._cut(statement)
            offset = end

    def _request(self, statement: bytes | None, size: int, kind: int) -> Parse:
        if kind == ord("X"):
            return Parse(Status.MESSAGE, Message(is_request=True, size=size, request_type="TERMINATE", expects_response=False))
        if kind == ord("p"):  # a password or SASL message: its content is never kept
            return Parse(Status.MESSAGE, Message(is_request=True, size=size, request_type="AUTH"))
        text = statement.decode("utf-8", errors="replace") if statement is not None else None
        return Parse(Status.MESSAGE, Message(is_request=True, size=size, request_type=sql_verb(text) if text else "EXECUTE",
                                             request_resource=mask_sql(text) if text else None))

    def _cut(self, statement: bytes | None) -> Parse:
        if statement is None:
            return malformed("PostgreSQL request cut before its statement")
        text = statement.decode("utf-8", errors="replace")
        return Parse(Status.MESSAGE, Message(is_request=True, size=None, request_type=sql_verb(text), request_resource=mask_sql(text)))

    def parse_response(self, data: bytes, final: bool) -> Parse:
        if len(data) == 1 and data in (b"N", b"S", b"G"):  # the answer to an SSL/GSS request
            return Parse(Status.MESSAGE, Message(is_request=False, size=1, response_message=data.decode()))
        offset, tag, error, code = 0, None, None, None
        while True:
            if offset + 5 > len(data):
                if not final:
                    return NEED_MORE
                break
            kind = data[offset]
            length = struct.unpack_from(">i", data, offset + 1)[0]
            if kind not in _BACKEND or not 4 <= length < _MAX_MESSAGE:
                return malformed(f"not a PostgreSQL backend message at byte {offset}")
            end = offset + 1 + length
            body = data[offset + 5:min(end, len(data))]
            if kind == ord("C"):
                tag = body.split(b"\0", 1)[0].decode("utf-8", errors="replace")
            elif kind == ord("E"):
                fields = {f[:1]: f[1:].decode("utf-8", errors="replace") for f in body.split(b"\0") if f}
                code = fields.get(b"C")
                error = f"{code}: {fields.get(b'M', '')}"[:256] if code else fields.get(b"M", "error")[:256]
            if kind == ord("Z"):
                if end > len(data):
                    return NEED_MORE if not final else self._response(None, tag, error, code)
                return self._response(end, tag, error, code)
            if end > len(data):
                if not final:
                    return NEED_MORE
                break
            offset = end
        return self._response(None, tag, error, code)

    def _response(self, size: int | None, tag: str | None, error: str | None, code: str | None) -> Parse:
        error_class = None
        if error is not None:
            error_class = ErrorClass.SERVER_ERROR if code and code.startswith(_SERVER_CLASSES) else ErrorClass.CLIENT_ERROR
        return Parse(Status.MESSAGE, Message(is_request=False, size=size, response_message=error or tag, error_class=error_class,
                                             attributes=(("sql.sqlstate", code),) if code else ()))


def _frontend_run(data: bytes) -> bool:
    """A client's bytes captured after the startup: frontend messages of consistent lengths that end with the bytes
    (the capture may cut the last). It must carry a statement that reads as SQL (Query, Parse), or be a whole run
    that ends with Sync (Bind/Execute/Sync of a prepared statement), or be one Terminate."""
    offset, kinds, statement = 0, b"", False
    while offset + 5 <= len(data) and len(kinds) < 16:
        kind = data[offset]
        length = struct.unpack_from(">i", data, offset + 1)[0]
        if kind not in _RUN or not 4 <= length < _MAX_MESSAGE or (kind in b"SHX" and length != 4):
            return False
        body = data[offset + 5:offset + 1 + length]
        if kind == ord("Q"):
            text, _, rest = body.partition(b"\0")
            if rest or not looks_like_sql(text):  # one statement, NUL-terminated at the message's end
                return False
            statement = True
        elif kind == ord("P"):
            fields = body.split(b"\0", 2)
            if len(fields) < 2 or not looks_like_sql(fields[1]):
                return False
            statement = True
        elif kind == ord("E") and offset + 1 + length <= len(data) and body.find(b"\0") != length - 9:
            return False  # a portal name, then the row limit
        kinds += bytes((kind,))
        offset += 1 + length
    if offset < len(data):  # bytes left that start no message: not this protocol
        return False
    return statement or (offset == len(data) and (kinds[-1:] == b"S" and len(kinds) > 1 or kinds == b"X"))


_RUN = frozenset(b"QPBDESHX")  # the frontend messages a pooled connection sends after its startup


POSTGRES = Postgres()
