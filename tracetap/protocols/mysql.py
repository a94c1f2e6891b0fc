"""MySQL client/server protocol: the handshake (the server speaks first) and its login, COM_QUERY and
COM_STMT_* commands, and OK / ERR / result-set responses (with or without CLIENT_DEPRECATE_EOF)."""

from __future__ import annotations

import struct

from tracetap.protocols.base import NEED_MORE, ErrorClass, Message, Parse, Status, malformed
from tracetap.protocols.sql import mask_sql, sql_verb
from tracetap.redact import mysql as redact_mysql
from tracetap.redact import sql as redact_sql

COMMANDS = {0x01: "QUIT", 0x02: "INIT_DB", 0x03: "QUERY", 0x04: "FIELD_LIST", 0x0E: "PING", 0x11: "CHANGE_USER",
            0x16: "STMT_PREPARE", 0x17: "STMT_EXECUTE", 0x18: "STMT_SEND_LONG_DATA", 0x19: "STMT_CLOSE", 0x1A: "STMT_RESET",
            0x1F: "RESET_CONNECTION"}
_NO_RESPONSE = frozenset({0x01, 0x18, 0x19})  # QUIT, SEND_LONG_DATA, STMT_CLOSE
_MAX_PACKET = 0xFFFFFF
# Server error codes that mean the server or its environment failed (out of resources, crashed tables, shutdown).
_SERVER_ERRORS = frozenset({1021, 1037, 1038, 1040, 1041, 1053, 1077, 1078, 1079, 1080, 1152, 1153, 1154, 1155, 1156, 1157,
                            1158, 1159, 1160, 1161, 1194, 1195, 1205, 1213, 2002, 2006, 2013})


def _packet(data: bytes, offset: int) -> tuple[int, int, int] | None:
    """(payload length, sequence id, payload offset) of the packet at offset, if its header is there."""
    if offset + 4 > len(data):
        return None
    length = data[offset] | data[offset + 1] << 8 | data[offset + 2] << 16
    return length, data[offset + 3], offset + 4


class MySql:
    name = "MYSQL"
    symbols = ("MYSQL",)
    redaction = (redact_sql.scans, redact_mysql.scans)
    ports = frozenset({3306, 3307, 33060})

    def server_first(self, first: bytes) -> bool:
        """The server's greeting: sequence 0, protocol version 10, a NUL-terminated version string."""
        header = _packet(first, 0)
        return bool(header and header[1] == 0 and len(first) > 5 and first[4] == 10 and b"\0" in first[5:60])

    def detect(self, first: bytes, port: int) -> bool:
        header = _packet(first, 0)
        if not header or not 0 < header[0] <= _MAX_PACKET:
            return False
        length, seq, start = header
        if self.server_first(first):
            return True
        if _login(first, length, seq, start):
            return True
        return port in self.ports and seq == 0 and len(first) > 4 and first[4] in COMMANDS

    def parse_request(self, data: bytes, final: bool) -> Parse:
        header = _packet(data, 0)
        if header is None or len(data) < 5:
            return NEED_MORE if not final else malformed("MySQL packet header cut")
        length, seq, start = header
        size = 4 + length
        if _login(data, length, seq, start):
            return Parse(Status.MESSAGE, Message(is_request=True, size=size, request_type="LOGIN"))
        if seq != 0 or data[4] not in COMMANDS:
            return malformed(f"not a MySQL command packet (sequence {seq}, command 0x{data[4]:02x})")
        command = data[4]
        name = COMMANDS[command]
        resource = verb = None
        if command in (0x03, 0x16):
            text = data[5:size].decode("utf-8", errors="replace")
            verb, resource = sql_verb(text), mask_sql(text)
        elif command == 0x17 and len(data) >= 9:
            resource = f"statement {struct.unpack_from('<I', data, 5)[0]}"
        elif command == 0x02:
            resource = data[5:size].decode("utf-8", errors="replace")
        return Parse(Status.MESSAGE, Message(is_request=True, size=size, request_type=verb or name, request_resource=resource,
                                             expects_response=command not in _NO_RESPONSE, attributes=(("mysql.command", name),)))

    def parse_response(self, data: bytes, final: bool) -> Parse:
        header = _packet(data, 0)
        if header is None or len(data) < 5:
            return NEED_MORE if not final else malformed("MySQL packet header cut")
        length, seq, start = header
        first = data[start]
        if seq == 0 and first == 10:  # the greeting: answers no request
            return Parse(Status.MESSAGE, Message(is_request=False, size=4 + length, response_message="greeting"))
        if first == 0xFF and length >= 3:
            if len(data) < start + 3:  # the error code itself is cut
                return NEED_MORE if not final else malformed("MySQL error packet cut before its code")
            code = struct.unpack_from("<H", data, start + 1)[0]
            text = data[start + 3:start + length]
            if text[:1] == b"#":
                text = text[6:]
            error = ErrorClass.SERVER_ERROR if code in _SERVER_ERRORS else ErrorClass.CLIENT_ERROR
            return Parse(Status.MESSAGE, Message(is_request=False, size=4 + length, response_code=code,
                                                 response_message=text.decode("utf-8", errors="replace")[:256], error_class=error))
        if first in (0x00, 0xFE) and length < 0xFFFFFF:
            if first == 0x00 and length >= 12 and seq == 1 and _prepare_ok(data, start, length):
                return Parse(Status.MESSAGE, Message(is_request=False, size=None, response_code=0))  # then parameter/column definitions
            return Parse(Status.MESSAGE, Message(is_request=False, size=4 + length, response_code=0))
        # a result set: column count, column definitions, [EOF], rows, EOF or OK
        end = _result_set_end(data, start, length)
        if end is None and not final:
            return NEED_MORE
        return Parse(Status.MESSAGE, Message(is_request=False, size=end, response_code=0))


def _login(data: bytes, length: int, seq: int, start: int) -> bool:
    """A HandshakeResponse41: sequence 1, then a filler of 23 bytes, the first 19 zero (MariaDB uses the last 4)."""
    return seq == 1 and length >= 32 and data[start + 9:start + 28] == bytes(19)


def _prepare_ok(data: bytes, start: int, length: int) -> bool:
    return length == 12 and len(data) > start + 9 and data[start + 9] == 0  # status, statement id, columns, params, filler 0, warnings


def _result_set_end(data: bytes, start: int, length: int) -> int | None:
    offset = start + length
    columns = data[start] if data[start] < 0xFB else None
    if columns is None:
        return None
    for _ in range(columns):  # column definitions
        header = _packet(data, offset)
        if header is None:
            return None
        offset = header[2] + header[0]
    header = _packet(data, offset)
    if header is None:
        return None
    if header[0] < 9 and offset + 4 < len(data) and data[offset + 4] == 0xFE:  # the EOF after the definitions
        offset = header[2] + header[0]
    while True:  # rows, until an EOF/OK (0xFE, short) or an ERR
        header = _packet(data, offset)
        if header is None or header[2] >= len(data):
            return None
        length, _, body = header
        kind = data[body]
        offset = body + length
        # a row starting 0xFE would hold a 2**24-byte string, so a shorter 0xFE packet ends the set
        if (kind == 0xFE and length < 0xFFFFFF) or kind == 0xFF:
            return offset if offset <= len(data) else None


MYSQL = MySql()
