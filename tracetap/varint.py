"""Unsigned base-128 varints (little-endian groups of 7 bits), as Avro and the sketch format use them."""

from __future__ import annotations


def uvarint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_MAX_BYTES = 10  # 64 bits; a longer run of continuation bytes is garbage, and shifting it is quadratic


def read_uvarint(data: bytes, offset: int) -> tuple[int, int]:
    """(value, offset after it); ValueError when the bytes end inside the number or it runs past 10 bytes."""
    value = shift = 0
    while True:
        if offset >= len(data):
            raise ValueError("bytes end inside a varint")
        if shift >= 7 * _MAX_BYTES:
            raise ValueError(f"a varint longer than {_MAX_BYTES} bytes")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
