"""Kafka SASL credentials: the auth bytes of SaslAuthenticate requests (PLAIN keeps the user name), and
the raw SASL tokens a client sends after a version-0 SaslHandshake (the legacy framing: a 4-byte length
and the token, no request header).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracetap.redact.base import Scan, Window
from tracetap.redact.framing import LOST, NEED_MORE, Walk, walk

_SASL_HANDSHAKE = 17
_SASL_AUTHENTICATE = 36
_MAX_API_KEY = 100
_MAX_VERSION = 30
_MAX_FRAME = 100 * 1024 * 1024  # the broker's socket.request.max.bytes default
_LEGACY_TOKENS = 2  # SCRAM sends two client messages; PLAIN one, then requests resume (and are recognised)


@dataclass(slots=True)
class _KafkaWalk(Walk):
    raw_tokens: int = 0  # frames still expected to be raw SASL tokens (after SaslHandshake v0)


def passwords(w: Window) -> None:
    walk(w, "kafka", _KafkaWalk, _step)


def _step(w: Window, pos: int, state: _KafkaWalk) -> int:
    data = w.data
    size = len(data)
    if pos + 8 > size:
        return NEED_MORE
    frame = int.from_bytes(data[pos:pos + 4], "big")
    if frame < 4 or frame > _MAX_FRAME:
        return LOST
    body, end = pos + 4, pos + 4 + frame
    api_key = int.from_bytes(data[body:body + 2], "big")
    version = int.from_bytes(data[body + 2:body + 4], "big")
    is_request = api_key <= _MAX_API_KEY and version <= _MAX_VERSION
    if state.raw_tokens and not is_request:
        state.raw_tokens -= 1
        _token(w, body, min(end, size), end)
        return end
    state.raw_tokens = 0
    if not is_request:
        if w.stream_at + pos == 0 and end <= size and _is_plain(data[body:end]):
            _token(w, body, end, end)  # a raw PLAIN token as a connection's first bytes (no handshake at all)
            return end
        return LOST
    if api_key == _SASL_HANDSHAKE and version == 0:
        state.raw_tokens = _LEGACY_TOKENS
    elif api_key == _SASL_AUTHENTICATE:
        return _authenticate(w, body, end, version)
    return end


def _authenticate(w: Window, body: int, end: int, version: int) -> int:
    """SaslAuthenticate: header (api key, version, correlation id, client id[, tagged fields]), auth bytes."""
    data = w.data
    size = len(data)
    pos = body + 8
    if pos + 2 > size:
        return NEED_MORE if pos + 2 <= end else end
    client_id = int.from_bytes(data[pos:pos + 2], "big", signed=True)
    pos += 2 + max(client_id, 0)
    if version >= 2:  # flexible versions: header tagged fields, then compact bytes (uvarint length + 1)
        pos = _skip_tagged_fields(data, pos, end)
        length, pos = _uvarint(data, pos, min(end, size))
        length -= 1
    else:
        if pos + 4 > min(end, size):
            return NEED_MORE if pos + 4 <= end else end
        length = int.from_bytes(data[pos:pos + 4], "big", signed=True)
        pos += 4
    if pos < 0:
        return NEED_MORE if size < end else end
    if length > 0:
        stop = min(pos + length, end)
        _token(w, pos, min(stop, size), stop)
    return end


def _token(w: Window, start: int, seen_end: int, end: int) -> None:
    """Mask a SASL token; a complete PLAIN token (authzid NUL user NUL password) keeps its user."""
    data = w.data
    if end <= len(data) and _is_plain(data[start:end]):
        w.mask(data.rfind(b"\0", start, end) + 1, end)
    else:
        w.mask_open(start, seen_end, end)


def _is_plain(token: bytes) -> bool:
    return token.count(b"\0") == 2 and not token.endswith(b"\0")


def _skip_tagged_fields(data: bytes, pos: int, end: int) -> int:
    count, pos = _uvarint(data, pos, min(end, len(data)))
    for _ in range(min(count, 64)):
        if pos < 0:
            return -1
        _, pos = _uvarint(data, pos, min(end, len(data)))  # tag
        size, pos = _uvarint(data, pos, min(end, len(data)))
        pos = pos + size if pos >= 0 else -1
    return pos


def _uvarint(data: bytes, pos: int, limit: int) -> tuple[int, int]:
    """(value, position after it), or (0, -1) if it is cut or longer than 5 bytes."""
    value = shift = 0
    while 0 <= pos < limit and shift <= 28:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    return 0, -1


def scans(rules: Any) -> tuple[Scan, ...]:
    """Kafka's rule: SaslAuthenticate auth bytes, and the raw tokens after a v0 SaslHandshake (switch `kafka_sasl`)."""
    return (passwords,) if rules.kafka_sasl else ()
