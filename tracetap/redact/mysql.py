"""MySQL credentials: the auth response of a HandshakeResponse41, every packet of the authentication
exchange that follows it (an auth-switch answer to `mysql_clear_password` is the password in clear), and
COM_CHANGE_USER's auth response. SQL text with passwords is `sql.passwords`' job.
"""

from __future__ import annotations

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


@dataclass(slots=True)
class _MysqlWalk(Walk):
    authenticating: bool = False  # after a handshake response or COM_CHANGE_USER, until the next command
    secure: bool = True  # CLIENT_SECURE_CONNECTION: COM_CHANGE_USER's auth response has a length byte


def passwords(w: Window) -> None:
    walk(w, "mysql", _MysqlWalk, _step)


def _step(w: Window, pos: int, state: _MysqlWalk) -> int:
    data = w.data
    size = len(data)
    if pos + 4 > size:
        return NEED_MORE
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


def scans(rules: Any) -> tuple[Scan, ...]:
    """MySQL's rule: the auth data of the login and of COM_CHANGE_USER, and the auth exchange after them (switch `mysql_password`)."""
    return (passwords,) if rules.mysql_password else ()
