"""PostgreSQL credentials: the body of every password-carrying 'p' message (PasswordMessage in clear or
md5, SASLInitialResponse, SASLResponse), found by walking the frontend messages from the startup packet
on. SQL text with passwords is `sql.passwords`' job.
"""

from __future__ import annotations

from typing import Any

from tracetap.redact.base import Scan, Window
from tracetap.redact.framing import LOST, NEED_MORE, Walk, walk

_FRONTEND_TYPES = frozenset(b"BCcDdEFfHPpQSX")
_PASSWORD = 0x70  # 'p': PasswordMessage, SASLInitialResponse, SASLResponse (and GSSResponse)
_MAX_PASSWORD_MESSAGE = 64 * 1024
_MAX_MESSAGE = 1 << 30  # the server's own limit; larger lengths mean we are not at a message boundary
_STARTUP_CODES = frozenset({196608, 196610, 80877103, 80877104, 80877102})  # 3.0, 3.2, SSL, GSSENC, cancel
_MAX_STARTUP = 10_000
_TLS_RECORD = 0x16


def passwords(w: Window) -> None:
    walk(w, "postgres", Walk, _step)


def _step(w: Window, pos: int, state: Walk) -> int:
    data = w.data
    size = len(data)
    if data[pos] == 0:  # the startup phase: untyped packets (an int32 length, never a type byte)
        if pos + 8 > size:
            return NEED_MORE
        length = int.from_bytes(data[pos:pos + 4], "big")
        if 8 <= length <= _MAX_STARTUP and int.from_bytes(data[pos + 4:pos + 8], "big") in _STARTUP_CODES:
            return pos + length
    if pos + 5 > size:
        return NEED_MORE
    kind = data[pos]
    if kind == _TLS_RECORD and data[pos + 1] == 0x03:
        state.done = True  # a TLS handshake after an SSLRequest the server accepted
        return pos
    length = int.from_bytes(data[pos + 1:pos + 5], "big")
    if kind not in _FRONTEND_TYPES or length < 4 or length > (_MAX_PASSWORD_MESSAGE if kind == _PASSWORD else _MAX_MESSAGE):
        return LOST
    end = pos + 1 + length
    if kind == _PASSWORD:
        _password(w, pos + 5, end)
    return end


def _password(w: Window, start: int, end: int) -> None:
    data = w.data
    if end > len(data):
        w.mask_open(start, len(data), end)  # cut inside a sane-length message: mask what is there and the rest
        return
    body = data[start:end]
    if body.endswith(b"\0"):
        w.mask(start, end - 1)  # PasswordMessage (clear text or md5); the terminator is framing
    elif body.startswith(b"c="):
        w.mask(start, end)  # SASLResponse: SCRAM client-final-message "c=...,r=...,p=<proof>"
    else:
        mechanism_end = body.find(b"\0")
        if mechanism_end > 0 and len(body) >= mechanism_end + 5:
            declared = int.from_bytes(body[mechanism_end + 1:mechanism_end + 5], "big", signed=True)
            if declared == len(body) - mechanism_end - 5 or (declared == -1 and len(body) == mechanism_end + 5):
                w.mask(start, end)  # SASLInitialResponse: mechanism, int32 length, initial response


def scans(rules: Any) -> tuple[Scan, ...]:
    """PostgreSQL's rule: PasswordMessage, SASLInitialResponse and SASLResponse (switch `postgres_password`)."""
    return (passwords,) if rules.postgres_password else ()
