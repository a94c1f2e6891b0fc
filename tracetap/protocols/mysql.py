"""MySQL client/server protocol: the handshake (the server speaks first) and its login, COM_QUERY (with or without
query attributes), COM_FIELD_LIST and COM_STMT_* commands, OK / ERR / result-set responses (with or without
CLIENT_DEPRECATE_EOF), and the compressed protocol (zlib), all recognised from their structure on any port."""

from __future__ import annotations

import codecs
import struct
import zlib
from collections.abc import Callable

from tracetap.protocols.base import NEED_MORE, ErrorClass, Message, Parse, Status, malformed
from tracetap.protocols.sql import mask_sql, sql_verb
from tracetap.redact import mysql as redact_mysql
from tracetap.redact import sql as redact_sql

COMMANDS = {0x01: "QUIT", 0x02: "INIT_DB", 0x03: "QUERY", 0x04: "FIELD_LIST", 0x0E: "PING", 0x11: "CHANGE_USER",
            0x16: "STMT_PREPARE", 0x17: "STMT_EXECUTE", 0x18: "STMT_SEND_LONG_DATA", 0x19: "STMT_CLOSE", 0x1A: "STMT_RESET",
            0x1F: "RESET_CONNECTION"}
_NO_RESPONSE = frozenset({0x01, 0x18, 0x19})  # QUIT, SEND_LONG_DATA, STMT_CLOSE
_MAX_PACKET = 0xFFFFFF
# A server ERR is a SERVER_ERROR when its SQLSTATE class is one PostgreSQL's rule calls the server's (connection
# exception, insufficient resources, operator intervention, system error, internal error: postgres._SERVER_CLASSES),
# or when its code is one of these, which MySQL files under the catch-all HY000/HY001: out of memory, disk or threads,
# file I/O and storage-engine failures, crashed tables, shutdown, read-only mode, statement timeouts and kills.
# Deadlocks (1213, SQLSTATE 40001) and lock wait timeouts (1205) stay client errors, as PostgreSQL's 40P01 and 55P03:
# the server is healthy and the client's transactions collided (it should retry).
_SERVER_CLASSES = ("08", "53", "57", "58", "XX")
_SERVER_ERRORS = frozenset({1021, 1024, 1026, 1030, 1037, 1038, 1040, 1041, 1053, 1077, 1078, 1079, 1080, 1114, 1135, 1152,
                            1180, 1181, 1194, 1195, 1203, 1290, 1317, 1637, 1815, 1836, 1878, 1927, 1969, 3024})
_COMPRESSED_HEADER = 7  # compressed length (3), compressed sequence (1), uncompressed length (3; 0: stored as is)
# Inflated bytes per parse: at most 16 MiB, and 128 KiB plus 12 per wire byte, so that walking them (a result set of
# tiny rows costs ~70 ns a byte) stays linear in the input whatever zlib's ratio (up to ~1000; SQL results: 3 to 20,
# REPEAT() 400). Past it the message is read as cut (its end unknown) and flagged mysql.inflate_limit.
_MAX_INFLATED_BYTES = 16 << 20
_INFLATE_BASE_BYTES = 128 << 10
_INFLATE_PER_WIRE_BYTE = 12
_MIN_SPLIT_STORED = 1024  # a stored compressed packet smaller than this holds whole MySQL packets
_ZLIB_FLAGS = frozenset({0x01, 0x5E, 0x9C, 0xDA})  # the FLG bytes that follow CMF 0x78 (no preset dictionary)
_SQL_SCAN_BYTES = 256
_SQL_STARTS = frozenset("(/-# \t\r\n")
_LENENC_WIDTH = {0xFC: 2, 0xFD: 3, 0xFE: 8}
# Binary-protocol value widths by field type (query attribute values); -1: a length byte and that many bytes
# (dates and times); absent: a length-encoded string (strings, decimals, blobs, JSON, geometry, bits).
_VALUE_WIDTH = {0x01: 1, 0x02: 2, 0x03: 4, 0x04: 4, 0x05: 8, 0x06: 0, 0x07: -1, 0x08: 8, 0x09: 4, 0x0A: -1, 0x0B: -1,
                0x0C: -1, 0x0D: 2}
_STRING_TYPES = frozenset({0x00, 0x0F, 0x10, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF})
_TRACE_ATTRIBUTES = frozenset({"traceparent", "tracestate", "x-request-id", "sw8"})


def _packet(data: bytes, offset: int) -> tuple[int, int, int] | None:
    """(payload length, sequence id, payload offset) of the packet at offset, if its header is there."""
    if offset + 4 > len(data):
        return None
    length = data[offset] | data[offset + 1] << 8 | data[offset + 2] << 16
    return length, data[offset + 3], offset + 4


def _undecided(data: bytes, final: bool) -> bool:
    """Too few bytes to tell a compressed packet from a plain one: mariadbd reads a compressed packet's 7-byte header
    alone, which as a plain packet would be a command cut short. A plain packet this short and whole is decided."""
    return not final and len(data) < _COMPRESSED_HEADER + 2 and len(data) < 4 + int.from_bytes(data[:3], "little")


class MySql:
    name = "MYSQL"
    symbols = ("MYSQL",)
    redaction = (redact_sql.scans, redact_mysql.scans)
    ports = frozenset({3306, 3307, 6033, 33060})  # 6033: ProxySQL's client port

    def server_first(self, first: bytes) -> bool:
        """The server's greeting: sequence 0, protocol version 10, a NUL-terminated version string ("8.0.36", "5.5.5-10.11")."""
        header = _packet(first, 0)
        return bool(header and header[1] == 0 and len(first) > 6 and first[4] == 10 and 0x30 <= first[5] <= 0x39
                    and b"\0" in first[5:60])

    def detect(self, first: bytes, port: int) -> bool:
        header = _packet(first, 0)
        if not header or not 0 < header[0] <= _MAX_PACKET:
            return False
        length, seq, start = header
        if self.server_first(first) or _login(first, length, seq, start) or _command(first):
            return True
        if port in self.ports and seq == 0 and len(first) > 4 and first[4] in COMMANDS:  # a prefix the capture cut, on a MySQL port
            return True
        unpacked = _unpack(first, False) if seq == 0 and compressed_packet(first) else None  # compressed sequence 0: a command
        return bool(unpacked and unpacked[1] and _command(bytes(unpacked[0][:unpacked[1][0][1]])))

    def parse_request(self, data: bytes, final: bool) -> Parse:
        if _undecided(data, final):
            return NEED_MORE
        if compressed_packet(data):
            unpacked = _unpack(data, final)
            if unpacked is not None:
                return _from_compressed(self._request, unpacked, final)
            if data[4:7] != b"\0\0\0":
                return _unreadable(True)
        return self._request(data, final)

    def parse_response(self, data: bytes, final: bool) -> Parse:
        if _undecided(data, final):
            return NEED_MORE
        if compressed_packet(data):
            unpacked = _unpack(data, final)
            if unpacked is not None:
                return _from_compressed(self._response, unpacked, final)
            if data[4:7] != b"\0\0\0":
                return _unreadable(False)
        return self._response(data, final)

    def _request(self, data: bytes, final: bool) -> Parse:
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
        trace: tuple[tuple[str, str], ...] = ()
        if command in (0x03, 0x16):
            at, trace = (_query_text(data, 5, size) if command == 0x03 else None) or (5, ())
            text = data[at:size].decode("utf-8", errors="replace")
            verb, resource = sql_verb(text), mask_sql(text)
        elif command == 0x17 and len(data) >= 9:
            resource = f"statement {struct.unpack_from('<I', data, 5)[0]}"
        elif command in (0x02, 0x04):  # INIT_DB's schema; FIELD_LIST's table, then NUL and a column wildcard
            resource = data[5:size].split(b"\0", 1)[0].decode("utf-8", errors="replace")
        return Parse(Status.MESSAGE, Message(is_request=True, size=size, request_type=verb or name, request_resource=resource,
                                             trace_headers=trace, expects_response=command not in _NO_RESPONSE,
                                             attributes=(("mysql.command", name),)))

    def _response(self, data: bytes, final: bool) -> Parse:
        """One command's response. While a result's closing OK/EOF says more results exist (a multi-statement, a
        CALL), the next result answers the same command; an error among them is the response's."""
        at, answer = 0, None
        while True:
            parsed, closing = _result(data, at, final)
            message = parsed.message
            if message is None:
                if not at:
                    return parsed
                if parsed.status is Status.NEED_MORE:
                    return NEED_MORE
                return Parse(Status.MESSAGE, answer._replace(size=None))  # a later result is cut or unreadable
            if answer is None or message.error_class is not None:
                answer = message
            if message.size is None or closing is None or not _more_results(data, closing):
                return Parse(Status.MESSAGE, answer._replace(size=message.size))
            at = message.size


def _result(data: bytes, at: int, final: bool) -> tuple[Parse, int | None]:
    """The result at `at` (its message's size is the offset of its end), and the offset of its closing OK/EOF packet."""
    header = _packet(data, at)
    if header is None or len(data) <= at + 4:
        return NEED_MORE if not final else malformed("MySQL packet header cut"), None
    length, seq, start = header
    first = data[start]
    if seq == 0 and first == 10 and not at:  # the greeting: answers no request
        return Parse(Status.MESSAGE, Message(is_request=False, size=4 + length, response_message="greeting")), None
    if first == 0xFF and length >= 3:
        return _error(data, start, length, final), None
    if first in (0x00, 0xFE) and length < 0xFFFFFF:
        if first == 0x00 and length >= 12 and seq == 1 and _prepare_ok(data, start, length):
            return Parse(Status.MESSAGE, Message(is_request=False, size=None, response_code=0)), None  # then parameter/column definitions
        return Parse(Status.MESSAGE, Message(is_request=False, size=start + length, response_code=0)), at
    if length > 4 and data[start:start + 4] == b"\x03def":  # COM_FIELD_LIST: column definitions, no count, then EOF
        found = _rows_end(data, start + length)
    else:  # a result set: column count, column definitions, [EOF], rows, EOF or OK
        found = _result_set_end(data, start, length)
    if found is None:
        if not final:
            return NEED_MORE, None
        return Parse(Status.MESSAGE, Message(is_request=False, size=None, response_code=0)), None
    end, closing = found
    if data[closing + 4] == 0xFF:  # the rows stopped with an error (a query killed, a conversion failed)
        error = _error(data, closing + 4, end - closing - 4, final)
        return (Parse(Status.MESSAGE, error.message._replace(size=end)) if error.message else error), None
    return Parse(Status.MESSAGE, Message(is_request=False, size=end, response_code=0)), closing


def _more_results(data: bytes, closing: int) -> bool:
    """SERVER_MORE_RESULTS_EXISTS in the status flags of the closing packet at `closing`: an EOF (0xFE, warnings,
    status) or an OK (0x00 or, with CLIENT_DEPRECATE_EOF, 0xFE: affected rows, last insert id, status)."""
    length, _, body = _packet(data, closing)
    if data[body] == 0xFE and length < 7:
        status_at = body + 3
    else:
        _, status_at = _lenenc(data, body + 1)
        _, status_at = _lenenc(data, status_at)
    return status_at + 1 < min(len(data), body + length) and bool(data[status_at] & 0x08)


def _error(data: bytes, start: int, length: int, final: bool) -> Parse:
    """An ERR packet: code, then `#` and a 5-character SQLSTATE (since 4.1), then the message."""
    if len(data) < start + 3:  # the error code itself is cut
        return NEED_MORE if not final else malformed("MySQL error packet cut before its code")
    code = struct.unpack_from("<H", data, start + 1)[0]
    text = data[start + 3:start + length]
    sqlstate = ""
    if text[:1] == b"#":
        sqlstate, text = text[1:6].decode("ascii", errors="replace"), text[6:]
    server = code in _SERVER_ERRORS or sqlstate.startswith(_SERVER_CLASSES)
    return Parse(Status.MESSAGE, Message(is_request=False, size=start + length, response_code=code,
                                         response_message=text.decode("utf-8", errors="replace")[:256],
                                         error_class=ErrorClass.SERVER_ERROR if server else ErrorClass.CLIENT_ERROR,
                                         attributes=(("sql.sqlstate", sqlstate),) if sqlstate else ()))


def _login(data: bytes, length: int, seq: int, start: int) -> bool:
    """A HandshakeResponse41: sequence 1, then a filler of 23 bytes, the first 19 zero (MariaDB uses the last 4)."""
    return seq == 1 and length >= 32 and data[start + 9:start + 28] == bytes(19)


def _prepare_ok(data: bytes, start: int, length: int) -> bool:
    return length == 12 and len(data) > start + 9 and data[start + 9] == 0  # status, statement id, columns, params, filler 0, warnings


def _result_set_end(data: bytes, start: int, length: int) -> tuple[int, int] | None:
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
    return _rows_end(data, offset)


def _rows_end(data: bytes, offset: int) -> tuple[int, int] | None:
    """(end, offset of the closing packet) of a run of packets (rows, column definitions) closed by an EOF/OK (0xFE,
    short) or an ERR."""
    while True:
        header = _packet(data, offset)
        if header is None or header[2] >= len(data):
            return None
        length, _, body = header
        kind = data[body]
        closing, offset = offset, body + length
        # a row starting 0xFE would hold a 2**24-byte string, so a shorter 0xFE packet ends the set
        if (kind == 0xFE and length < 0xFFFFFF) or kind == 0xFF:
            return (offset, closing) if offset <= len(data) else None


# Structure: what detection accepts without a port ---------------------------------------------------------------
def _command(data: bytes) -> bool:
    """A command packet: sequence 0, a known command, a length that the bytes bear out (exactly one packet or a run of
    whole packets), and a body that fits the command."""
    header = _packet(data, 0)
    if header is None or header[1] != 0 or not header[0] or len(data) < 5 or data[4] not in COMMANDS:
        return False
    size = 4 + header[0]
    if size != len(data) and not _whole_packets(data, size):
        return False
    command, body = data[4], data[5:min(size, 5 + _SQL_SCAN_BYTES)]
    if command in (0x01, 0x0E, 0x1F):  # QUIT, PING, RESET_CONNECTION
        return size == 5
    if command == 0x03:
        attributes = _query_text(data, 5, size)
        return attributes is not None or _like_sql(body)
    if command == 0x16:
        return _like_sql(body)
    if command == 0x17:  # statement id, flags (cursor type, parameter count available), iteration count 1
        return size >= 14 and data[9] <= 0x0F and data[10:14] == b"\x01\0\0\0"
    if command in (0x19, 0x1A):  # statement id
        return size == 9
    if command == 0x18:  # statement id, parameter id, data (ids are small: a connection numbers its statements from 1)
        return size >= 11 and data[8] == 0 and data[10] < 0x10
    if command == 0x04:  # table NUL wildcard
        table, nul, _ = body.partition(b"\0")
        return bool(nul) and _printable(table)
    return _printable(body.split(b"\0", 1)[0])  # INIT_DB's schema, CHANGE_USER's user


def _whole_packets(data: bytes, offset: int) -> bool:
    while offset < len(data):
        header = _packet(data, offset)
        if header is None:
            return False
        offset = header[2] + header[0]
    return offset == len(data)


def _printable(name: bytes) -> bool:
    return 0 < len(name) <= 256 and _like_text(name) and all(byte >= 0x20 for byte in name)


def _like_text(data: bytes) -> bool:
    """UTF-8 (a character cut at the end is allowed: the bytes may be a prefix)."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _like_sql(text: bytes) -> bool:
    """Starts like a statement (a keyword letter, `(`, a comment, blanks) and holds no control characters."""
    if not text or not (chr(text[0]) in _SQL_STARTS or 0x61 <= text[0] | 0x20 <= 0x7A):
        return False
    return _like_text(text) and all(byte >= 0x20 or byte in b"\t\r\n" for byte in text)


def _query_text(data: bytes, at: int, end: int) -> tuple[int, tuple[tuple[str, str], ...]] | None:
    """Where COM_QUERY's text starts after query attributes (CLIENT_QUERY_ATTRIBUTES: parameter count, parameter set
    count 1, then with parameters a NULL bitmap, bind flag 1, types and names, values), and the attributes that carry
    trace context; None when the payload does not hold attributes that end on SQL text."""
    end = min(end, len(data))
    count, at = _lenenc(data, at)
    sets, at = _lenenc(data, at)
    if count is None or sets != 1 or count > end - at:
        return None
    trace: list[tuple[str, str]] = []
    if count:
        nulls, at = data[at:at + (count + 7) // 8], at + (count + 7) // 8
        if at >= end or data[at] != 1:
            return None
        types, names, at = [], [], at + 1
        for _ in range(count):
            if at + 2 > end:
                return None
            types.append(data[at])
            name_size, at = _lenenc(data, at + 2)
            if name_size is None or at + name_size > end:
                return None
            names.append(data[at:at + name_size])
            at += name_size
        for index, (kind, name) in enumerate(zip(types, names)):
            if nulls[index // 8] >> (index % 8) & 1:
                continue
            value_at, at = _value(data, at, kind)
            if at is None or at > end:
                return None
            key = name.lower().decode("utf-8", errors="replace")
            if kind in _STRING_TYPES and key in _TRACE_ATTRIBUTES:
                trace.append((key, data[value_at:at].decode("utf-8", errors="replace")))
    if not _like_sql(data[at:min(end, at + _SQL_SCAN_BYTES)]):
        return None
    return at, tuple(trace)


def _lenenc(data: bytes, at: int) -> tuple[int | None, int]:
    if at >= len(data) or data[at] in (0xFB, 0xFF):
        return None, at
    width = _LENENC_WIDTH.get(data[at], 0)
    if not width:
        return data[at], at + 1
    if at + 1 + width > len(data):
        return None, at
    return int.from_bytes(data[at + 1:at + 1 + width], "little"), at + 1 + width


def _value(data: bytes, at: int, kind: int) -> tuple[int, int | None]:
    """(start, end) of one binary-protocol value of field type `kind`; end None if the type is unknown or the value cut."""
    width = _VALUE_WIDTH.get(kind)
    if width is None:
        if kind not in _STRING_TYPES:
            return at, None
        size, start = _lenenc(data, at)
        return start, None if size is None else start + size
    if width == -1:
        return at + 1, None if at >= len(data) else at + 1 + data[at]
    return at, at + width


# The compressed protocol -----------------------------------------------------------------------------------------
def compressed_packet(data: bytes) -> bool:
    """Do the bytes start with a compressed packet? Its header: a zlib stream (CMF 0x78 and a valid FLG; `_unpack` checks the inflated length), or
    a stored payload (uncompressed length 0) of MySQL packets that end where it does (only a large one, a full network
    buffer, may stop inside one). Bytes that are exactly one plain packet are that packet (read compressed, 3 would be
    missing); a plain OK (0x00, no rows affected, no insert id) followed by more bytes rarely chains exactly."""
    stored_size = int.from_bytes(data[:3], "little")
    if len(data) < _COMPRESSED_HEADER + 4 or len(data) == 4 + stored_size:
        return False
    if data[4:7] != b"\0\0\0":
        return data[7] == 0x78 and data[8] in _ZLIB_FLAGS
    end = _COMPRESSED_HEADER + stored_size
    if stored_size < 4 or end > len(data):
        return False
    offset = _COMPRESSED_HEADER
    while offset + 4 <= end:
        offset += 4 + int.from_bytes(data[offset:offset + 3], "little")
    return offset == end or (offset > end and stored_size >= _MIN_SPLIT_STORED)


def _unpack(data: bytes, final: bool) -> tuple[bytearray, list[tuple[int, int]], bool] | None:
    """The MySQL bytes carried by the compressed packets at the start of `data`: (bytes, (wire end, inner end) after
    each whole compressed packet, whether the inflate limit stopped it). A cut last packet is inflated as far as it goes
    when `final`. None: not compressed packets (a zlib stream that fails, an inflated length that disagrees)."""
    inner, ends, at = bytearray(), [], 0
    limit = min(_MAX_INFLATED_BYTES, _INFLATE_BASE_BYTES + _INFLATE_PER_WIRE_BYTE * len(data))
    while at + _COMPRESSED_HEADER <= len(data):
        stored_size = int.from_bytes(data[at:at + 3], "little")
        raw_size = int.from_bytes(data[at + 4:at + 7], "little")
        end = at + _COMPRESSED_HEADER + stored_size
        if end > len(data) and not final:
            break
        payload = data[at + _COMPRESSED_HEADER:end]
        if raw_size:
            budget = limit - len(inner)
            inflater = zlib.decompressobj()
            try:
                raw = inflater.decompress(payload, budget) if budget > 0 else b""
            except zlib.error:
                return None
            if len(raw) >= budget and not inflater.eof:
                inner += raw
                return inner, ends, True
            if end <= len(data) and (not inflater.eof or len(raw) != raw_size):
                return None
            inner += raw
        else:
            inner += payload[:max(0, limit - len(inner))]
            if len(inner) >= limit:
                return inner, ends, True
        if end > len(data):
            break
        ends.append((end, len(inner)))
        at = end
    return inner, ends, False


def _unreadable(is_request: bool) -> Parse:
    """A zlib stream that does not inflate (redaction masked its content): the message's end is unknown, so the rest
    of this side's bytes are skipped until the other side speaks."""
    return Parse(Status.MESSAGE, Message(is_request=is_request, size=None, attributes=(("mysql.compressed", "unreadable"),)))


def _from_compressed(parse: Callable[[bytes, bool], Parse], unpacked: tuple[bytearray, list[tuple[int, int]], bool], final: bool) -> Parse:
    """Parse the inner message and size it in wire bytes: the whole compressed packets up to the one where it ends
    (unknown when the bytes or the inflate limit stop before it, or when its own end is: a prepared statement's OK)."""
    inner, ends, capped = unpacked
    if not ends and not final and not capped:
        return NEED_MORE
    data = bytes(inner)
    result = parse(data, capped)
    if result.status is Status.NEED_MORE and final:
        result = parse(data, True)
    if result.status is not Status.MESSAGE or result.message is None:
        return result
    message = result.message
    wire = next((wire_end for wire_end, inner_end in ends if inner_end >= message.size), None) if message.size else None
    if wire is None and message.size is not None and not final and not capped:
        return NEED_MORE
    attributes = message.attributes + (("mysql.compressed", "true"),) + ((("mysql.inflate_limit", "true"),) if capped else ())
    return Parse(Status.MESSAGE, message._replace(size=wire, attributes=attributes))


MYSQL = MySql()
