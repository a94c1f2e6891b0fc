"""MySQL credentials: the auth response of a HandshakeResponse41, every packet of the authentication
exchange that follows it (an auth-switch answer to `mysql_clear_password` is the password in clear), and
COM_CHANGE_USER's auth response. SQL text with passwords is `sql.passwords`' job, except in the compressed
protocol, where no rule can mask inside a zlib stream and keep its length: a compressed packet whose content holds
a password clause's keyword, a COM_CHANGE_USER or its authentication exchange is masked whole.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from tracetap.redact.base import Scan, Window
from tracetap.redact.framing import NEED_MORE, Walk, walk

_PROTOCOL_41 = 0x0000_0200
_SSL = 0x0000_0800
_SECURE_CONNECTION = 0x0000_8000
_AUTH_LENENC = 0x0020_0000
_FIXED = 4 + 4 + 1 + 23  # capabilities, max packet, charset, filler (after the packet header)
# MySQL zero-fills 23 bytes; MariaDB puts its extended capabilities in the last 4, so only 19 must be zero.
_FILLER = bytes(19)
_LENENC_WIDTH = {0xFC: 2, 0xFD: 3, 0xFE: 8}
_COM_CHANGE_USER = 0x11
_MAX_USER = 512  # a user name longer than this is not a handshake: stop waiting for its NUL
_COMPRESSED_HEADER = 7
_MAX_WAIT = 4096  # a stored compressed packet up to this size is read whole before the stream is taken as compressed
_SECRET_WORDS = (b"passw", b"identif")  # what sql.passwords looks for, and PASSWORD() / IDENTIFIED WITH ... AS
_WORD_TAIL = 8  # inflated bytes kept between events: a keyword the cut split is found whole
_MAX_INFLATED_PER_EVENT = 1 << 20  # a compressed packet that inflates past this per event is masked, unread


@dataclass(slots=True)
class _MysqlWalk(Walk):
    authenticating: bool = False  # after a handshake response or COM_CHANGE_USER, until the next command
    secure: bool = True  # CLIENT_SECURE_CONNECTION: COM_CHANGE_USER's auth response has a length byte
    compressed: bool = False  # a compressed packet was seen: 7-byte compressed headers frame the stream from here on
    packet_left: int = 0  # bytes of the current compressed packet's payload not yet seen (it went on past the event)
    inflater: Any = None  # its zlib stream (None: stored as is)
    head: bytes = b""  # its first inner bytes, up to a MySQL packet header and command byte
    tail: bytes = b""  # its last inflated bytes


def passwords(w: Window) -> None:
    walk(w, "mysql", _MysqlWalk, _step)


def _step(w: Window, pos: int, state: _MysqlWalk) -> int:
    if state.packet_left:
        return _compressed_payload(w, pos, state)
    data = w.data
    size = len(data)
    if pos + 4 > size:
        return NEED_MORE
    if not state.compressed and _undecided(data, pos):
        return NEED_MORE
    if state.compressed or _starts_compressed(data, pos):
        return _compressed_packet(w, pos, state)
    length = int.from_bytes(data[pos:pos + 3], "little")
    sequence = data[pos + 3]
    body, end = pos + 4, pos + 4 + length
    if state.authenticating:
        if sequence != 0:
            w.mask_open(body, size, end)  # auth-switch responses, clear-text passwords, RSA-encrypted ones
            return end
        state.authenticating = False
    if sequence in (1, 2) and length > _FIXED:
        return _handshake_response(w, body, end, state)
    if sequence == 1 and length == _FIXED and body + 4 <= size and int.from_bytes(data[body:body + 4], "little") & _SSL:
        state.done = True  # an SSLRequest: TLS follows (its plaintext comes from uprobes, not this socket)
        return end
    if sequence == 0 and length >= 2:
        if body >= size:
            return NEED_MORE
        if data[body] == _COM_CHANGE_USER:
            return _change_user(w, body + 1, end, state)
    return end


def _handshake_response(w: Window, body: int, end: int, state: _MysqlWalk) -> int:
    data = w.data
    size = len(data)
    if body + _FIXED > size:
        return NEED_MORE if end > size else end
    capabilities = int.from_bytes(data[body:body + 4], "little")
    if not capabilities & _PROTOCOL_41 or data[body + 9:body + 9 + len(_FILLER)] != _FILLER:
        return end
    user_end = data.find(b"\0", body + _FIXED, min(end, size))
    if user_end == -1:
        return NEED_MORE if end > size and size - body - _FIXED < _MAX_USER else end
    state.authenticating = True
    state.secure = bool(capabilities & _SECURE_CONNECTION)
    pos = user_end + 1
    if capabilities & _AUTH_LENENC:
        if pos >= size:
            return NEED_MORE if pos < end else end
        first = data[pos]
        width = _LENENC_WIDTH.get(first, 0)
        if first >= 0xFB and not width:
            return end  # 0xFB (NULL) and 0xFF are not lengths
        if pos + 1 + width > size:
            return NEED_MORE if pos + 1 + width <= end else end
        auth_size = first if not width else int.from_bytes(data[pos + 1:pos + 1 + width], "little")
        start = pos + 1 + width
        w.mask_open(start, size, min(start + auth_size, end))
    elif capabilities & _SECURE_CONNECTION:
        if pos >= size:
            return NEED_MORE if pos < end else end
        w.mask_open(pos + 1, size, min(pos + 1 + data[pos], end))
    else:
        nul = data.find(b"\0", pos, min(end, size))
        if nul == -1:
            w.mask_open(pos, size, end)  # to the packet's end: the NUL is not in sight
        else:
            w.mask(pos, nul)
    return end


def _change_user(w: Window, pos: int, end: int, state: _MysqlWalk) -> int:
    """COM_CHANGE_USER: user NUL, auth response (a length byte, or NUL-terminated before 4.1), database…"""
    data = w.data
    size = len(data)
    user_end = data.find(b"\0", pos, min(end, size))
    if user_end == -1:
        return NEED_MORE if end > size and size - pos < _MAX_USER else end
    state.authenticating = True
    start = user_end + 1
    if state.secure:
        if start >= size:
            return NEED_MORE if start < end else end
        w.mask_open(start + 1, size, min(start + 1 + data[start], end))
    else:
        nul = data.find(b"\0", start, min(end, size))
        w.mask_open(start, size, end) if nul == -1 else w.mask(start, nul)
    return end


def _undecided(data: bytes, pos: int) -> bool:
    """Too few bytes to tell a compressed packet from a plain one: its header and the zlib header, or, stored, all of
    it when small (an event may cut a compressed packet where a plain packet of the same length field would end)."""
    held = len(data) - pos
    stored_size = int.from_bytes(data[pos:pos + 3], "little")
    if held < _COMPRESSED_HEADER + 2:
        return held != 4 + stored_size  # an exactly whole plain packet this short is no compressed one
    return data[pos + 4:pos + 7] == b"\0\0\0" and held < _COMPRESSED_HEADER + stored_size < _MAX_WAIT


def _starts_compressed(data: bytes, pos: int) -> bool:
    """A compressed packet at pos: a zlib stream (CMF 0x78) whose first bytes inflate, or a stored payload of whole
    MySQL packets (the parser's rule)."""
    from tracetap.protocols.mysql import compressed_packet  # here: the protocol module imports this one's rules

    stored_size = int.from_bytes(data[pos:pos + 3], "little")
    if data[pos + 4:pos + 7] == b"\0\0\0":
        return compressed_packet(data[pos:pos + _COMPRESSED_HEADER + stored_size])
    if len(data) < pos + _COMPRESSED_HEADER + 2 or data[pos + 7] != 0x78:
        return False
    try:
        zlib.decompressobj().decompress(data[pos + _COMPRESSED_HEADER:pos + _COMPRESSED_HEADER + 64], 64)
    except zlib.error:
        return False
    return True


def _compressed_packet(w: Window, pos: int, state: _MysqlWalk) -> int:
    if pos + _COMPRESSED_HEADER > len(w.data):
        return NEED_MORE
    state.compressed = True
    state.packet_left = int.from_bytes(w.data[pos:pos + 3], "little")
    state.inflater = zlib.decompressobj() if w.data[pos + 4:pos + 7] != b"\0\0\0" else None
    state.head = state.tail = b""
    # a masked packet keeps its zlib header, or its first MySQL packet header and command: the parser still knows it
    return _compressed_payload(w, pos + _COMPRESSED_HEADER, state, 2 if state.inflater is not None else 5)


def _compressed_payload(w: Window, pos: int, state: _MysqlWalk, keep: int = 0) -> int:
    """Read the compressed packet's payload this window holds; mask all of it that is left if its content is secret."""
    take = min(state.packet_left, len(w.data) - pos)
    chunk = w.data[pos:pos + take]
    content: bytes | None = chunk
    if state.inflater is not None:
        try:
            content = state.inflater.decompress(chunk, _MAX_INFLATED_PER_EVENT)
        except zlib.error:
            content = None
        if state.inflater is not None and state.inflater.unconsumed_tail:
            content = None
    if content is None or _secret(state, content, take == state.packet_left, state.inflater is not None):
        end = pos + state.packet_left
        w.mask_open(min(pos + keep, end), len(w.data), end)
        state.packet_left, state.inflater = 0, None
        return end
    state.tail = (state.tail + content)[-_WORD_TAIL:]
    state.packet_left -= take
    if not state.packet_left:
        state.inflater = None
    return pos + take


def _secret(state: _MysqlWalk, content: bytes, last: bool, inflated: bool) -> bool:
    """Content to mask: a COM_CHANGE_USER (its first inner packet, command 0x11, sequence 0), the authentication
    exchange after one (first inner packets of sequence > 0, until a command), or, inflated, a password clause's
    keyword (stored content is plain text, which `sql.passwords` masks precisely)."""
    if len(state.head) < 5:
        state.head += content[:5 - len(state.head)]
        if len(state.head) == 5 or last:
            sequence, command = state.head[3:4], state.head[4:5]
            if state.authenticating and sequence != b"\0":
                return True
            state.authenticating = sequence == b"\0" and command == bytes((_COM_CHANGE_USER,))
            if state.authenticating:
                return True
    if not inflated:
        return False
    text = (state.tail + content).lower()
    return any(word in text for word in _SECRET_WORDS)


def scans(rules: Any) -> tuple[Scan, ...]:
    """MySQL's rule: the auth data of the login and of COM_CHANGE_USER, and the auth exchange after them (switch `mysql_password`)."""
    return (passwords,) if rules.mysql_password else ()
