"""HTTP/2 and gRPC secrets: the values of credential header fields in HEADERS, PUSH_PROMISE and
CONTINUATION frames. HPACK is walked field by field (names from the static table, literal names decoded
with hpack's Huffman table, the dynamic table's names tracked per direction); a value whose name cannot be
known (a dynamic entry the walk could not follow) is masked too. A Huffman-coded `:path` holding a
secret query parameter is masked whole; a plain one is left to the URL rules, which see its text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from tracetap.redact import http
from tracetap.redact.base import Scan, Window
from tracetap.redact.framing import LOST, NEED_MORE, Walk, walk

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _PRIORITY, _RST, _SETTINGS, _PUSH_PROMISE, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = range(10)
_PADDED, _PRIORITY_FLAG = 0x08, 0x20
_STATIC = {i + 1: name for i, (name, _) in enumerate(HeaderTable.STATIC_TABLE)}
_DEFAULT_TABLE_BYTES = 4096
_MAX_FRAME = 1 << 24
_ENTRY_OVERHEAD = 32  # RFC 7541 4.1


@dataclass(slots=True)
class _Http2Walk(Walk):
    block_end: int | None = None  # stream offset where the header fields of the current frame end
    frame_end: int = 0
    names: list[bytes | None] = field(default_factory=list)  # the dynamic table's names, newest first
    sizes: list[int] = field(default_factory=list)
    table_bytes: int = 0
    max_table_bytes: int = _DEFAULT_TABLE_BYTES
    lost_track: bool = False  # an entry of unknown size went in: dynamic names can no longer be trusted


def passwords(w: Window, secret_names: frozenset[bytes], keys: tuple[str, ...]) -> None:
    walk(w, "http2", _Http2Walk, lambda w, pos, state: _step(w, pos, state, secret_names, keys))


def _step(w: Window, pos: int, state: _Http2Walk, secret_names: frozenset[bytes], keys: tuple[str, ...]) -> int:
    data = w.data
    size = len(data)
    if state.block_end is not None:
        return _fields(w, pos, state, secret_names, keys)
    if w.stream_at + pos == 0 and data[pos:pos + 1] == b"P":  # a client's connection preface
        if size - pos < len(PREFACE):
            return NEED_MORE if PREFACE.startswith(data[pos:]) else _give_up(state)
        return pos + len(PREFACE) if data.startswith(PREFACE, pos) else _give_up(state)
    if size - pos < 9:
        return NEED_MORE
    length = int.from_bytes(data[pos:pos + 3], "big")
    kind, flags = data[pos + 3], data[pos + 4]
    stream_id = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFF_FFFF
    end = pos + 9 + length
    if not state.names and not state.table_bytes and state.boundary is None and not _plausible(length, kind, flags, stream_id):
        # Not at a frame of an HTTP/2 connection: at the stream start that settles it, later try the next event.
        return _give_up(state) if w.stream_at + pos == 0 else LOST
    if kind in (_HEADERS, _PUSH_PROMISE, _CONTINUATION) and stream_id:
        start, pad = pos + 9, 0
        if kind != _CONTINUATION and flags & _PADDED:
            if start >= size:
                return NEED_MORE
            pad = data[start]
            start += 1
        if kind == _HEADERS and flags & _PRIORITY_FLAG:
            start += 5
        if kind == _PUSH_PROMISE:
            start += 4
        if start + pad > end:
            return LOST
        state.block_end, state.frame_end = w.stream_at + end - pad, w.stream_at + end
        return start
    return end


def _give_up(state: _Http2Walk) -> int:
    state.done = True
    return LOST


def _plausible(length: int, kind: int, flags: int, stream_id: int) -> bool:
    """A frame header as an HTTP/2 peer would write it (RFC 9113 section 6)."""
    if length >= _MAX_FRAME:
        return False
    if kind == _SETTINGS:
        return stream_id == 0 and length % 6 == 0 and flags & ~0x01 == 0
    if kind == _HEADERS:
        return stream_id != 0 and flags & ~0x2D == 0
    if kind == _DATA:
        return stream_id != 0 and flags & ~0x09 == 0
    if kind == _WINDOW_UPDATE:
        return length == 4 and flags == 0
    if kind == _PING:
        return stream_id == 0 and length == 8 and flags & ~0x01 == 0
    return False


def _fields(w: Window, pos: int, state: _Http2Walk, secret_names: frozenset[bytes], keys: tuple[str, ...]) -> int:
    size = len(w.data)
    limit = state.block_end - w.stream_at
    while pos < min(limit, size):
        after = _field(w, pos, limit, state, secret_names, keys)
        if after == NEED_MORE:
            if limit <= size:  # the field does not fit its frame: a field split across CONTINUATION frames
                state.lost_track = True
                w.mask(pos, limit)
                pos = limit
                break
            return NEED_MORE
        pos = after
    if pos >= limit:
        state.block_end = None
        return state.frame_end - w.stream_at
    return pos


def _field(w: Window, pos: int, limit: int, state: _Http2Walk, secret_names: frozenset[bytes], keys: tuple[str, ...]) -> int:
    """One HPACK field representation (RFC 7541 section 6) from pos; returns the position after it."""
    data = w.data
    end = min(limit, len(data))
    first = data[pos]
    if first & 0x80:  # indexed: no literal bytes
        _, after = _integer(data, pos, 7, end)
        return NEED_MORE if after < 0 else after
    if first & 0xE0 == 0x20:  # dynamic table size update
        new_max, after = _integer(data, pos, 5, end)
        if after < 0:
            return NEED_MORE
        state.max_table_bytes = new_max
        _evict(state)
        return after
    indexing = first & 0xC0 == 0x40
    index, after = _integer(data, pos, 6 if indexing else 4, end)
    if after < 0:
        return NEED_MORE
    if index == 0:
        huffman, length, start = _string_header(data, after, end)
        if start < 0 or start + length > end:
            return NEED_MORE  # names are short: wait for the whole name
        name = _decode(data[start:start + length], huffman)
        after = start + length
    elif index <= len(_STATIC):
        name = _STATIC[index]
    else:
        name = _dynamic_name(state, index - len(_STATIC) - 1)
    huffman, length, start = _string_header(data, after, end)
    if start < 0:
        return NEED_MORE
    value_end = start + length
    if value_end > limit:  # longer than its frame: mask what the frame holds
        w.mask(start, min(limit, len(data)))
        state.lost_track = True
        return limit
    if name is None or name in secret_names:
        w.mask_open(start, len(data), value_end)
    elif name == b":path" and huffman:
        # Its text is not visible to the URL rules: decode it, and if it is cut, too little is known: mask it.
        path = _decode(data[start:value_end], True) if value_end <= len(data) else None
        if path is None or any(f"{key}=".encode() in path for key in keys):
            w.mask_open(start, len(data), value_end)
    if indexing:
        value = _decode(data[start:value_end], True) if huffman and value_end <= len(data) and name is not None else None
        _insert(state, name, length if not huffman else None if value is None else len(value))
    return value_end


def _dynamic_name(state: _Http2Walk, position: int) -> bytes | None:
    if state.lost_track or position >= len(state.names):
        return None
    return state.names[position]


def _insert(state: _Http2Walk, name: bytes | None, value_size: int | None) -> None:
    if name is None or value_size is None:
        state.lost_track = True
        return
    entry = len(name) + value_size + _ENTRY_OVERHEAD
    state.names.insert(0, name)
    state.sizes.insert(0, entry)
    state.table_bytes += entry
    _evict(state)


def _evict(state: _Http2Walk) -> None:
    while state.table_bytes > state.max_table_bytes and state.sizes:
        state.table_bytes -= state.sizes.pop()
        state.names.pop()


def _decode(raw: bytes, huffman: bool) -> bytes | None:
    if not huffman:
        return raw.lower()
    try:
        return decode_huffman(raw).lower()
    except Exception:  # hostile bytes: hpack raises its own errors (and others on garbage)
        return None


def _string_header(data: bytes, pos: int, end: int) -> tuple[bool, int, int]:
    """(Huffman-coded?, length, start of the string), or start -1 if the length is cut."""
    if pos >= end:
        return False, 0, -1
    length, after = _integer(data, pos, 7, end)
    return bool(data[pos] & 0x80), length, after


def _integer(data: bytes, pos: int, prefix_bits: int, end: int) -> tuple[int, int]:
    """An HPACK integer with an N-bit prefix (RFC 7541 5.1): (value, position after), or (0, -1) if cut."""
    if pos >= end:
        return 0, -1
    mask = (1 << prefix_bits) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while pos < end and shift <= 28:  # larger than 2**28 is not a length any peer sends
        byte = data[pos]
        value += (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    return 0, -1


def header_names(kinds: dict[str, str]) -> frozenset[bytes]:
    """HTTP/2's secret field names: the HTTP/1 header rules' names (HTTP/2 sends them lowercase)."""
    return frozenset(name.encode() for name in kinds)


def scans(rules: Any) -> tuple[Scan, ...]:
    """HTTP/2's rule: the values of credential headers and cookies in HPACK blocks, the HTTP rules' names and keys."""
    kinds = http.header_kinds(rules)
    if not kinds:
        return ()
    names, keys = header_names(kinds), http.secret_keys(rules)
    return (lambda w: passwords(w, names, keys),)
