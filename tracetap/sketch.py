"""DDSketch: a mergeable quantile sketch with bounded relative error (Masson et al., VLDB 2019).

Values fall into logarithmic buckets; merging adds bucket counts, so windows built on different
partitions or engines merge exactly (the result does not depend on the merge order).
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from typing import Any

from tracetap.varint import read_uvarint, uvarint

RELATIVE_ACCURACY = 0.01
_FORMAT_VERSION = 1


class DDSketch:
    __slots__ = ("_gamma_log", "bins", "zeros", "count")

    def __init__(self, relative_accuracy: float = RELATIVE_ACCURACY) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError(f"relative_accuracy must be within (0, 1), got {relative_accuracy}")
        gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._gamma_log = math.log(gamma)
        self.bins: Counter[int] = Counter()
        self.zeros = 0
        self.count = 0

    def add(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"DDSketch takes non-negative values, got {value}")
        if value == 0:
            self.zeros += 1
        else:
            self.bins[math.ceil(math.log(value) / self._gamma_log)] += 1
        self.count += 1

    def merge(self, other: DDSketch) -> None:
        if other._gamma_log != self._gamma_log:
            raise ValueError("cannot merge sketches of different accuracy")
        self.bins.update(other.bins)
        self.zeros += other.zeros
        self.count += other.count

    def quantile(self, q: float) -> float | None:
        """The value at quantile q (0..1), within the relative accuracy; None when empty."""
        if not self.count:
            return None
        rank = q * (self.count - 1)
        seen = self.zeros
        if rank < seen:
            return 0.0
        for index in sorted(self.bins):
            seen += self.bins[index]
            if seen > rank:
                gamma = math.exp(self._gamma_log)
                return 2 * gamma ** index / (gamma + 1)
        return 2 * math.exp(self._gamma_log * max(self.bins)) / (math.exp(self._gamma_log) + 1)

    def to_bytes(self) -> bytes:
        """version, accuracy (as gamma's log, 8 bytes), zeros, then (index delta, count) pairs as varints."""
        out = bytearray([_FORMAT_VERSION]) + struct.pack("<d", self._gamma_log) + uvarint(self.zeros) + uvarint(len(self.bins))
        previous = 0
        for index in sorted(self.bins):
            out += uvarint(_zigzag(index - previous)) + uvarint(self.bins[index])
            previous = index
        return bytes(out)

    def to_state(self) -> list[Any]:
        """JSON-ready data; `from_state` reads it back (faster than the bytes format, for engine state)."""
        return [self._gamma_log, self.zeros, [[index, n] for index, n in self.bins.items()]]

    @classmethod
    def from_state(cls, state: list[Any]) -> DDSketch:
        gamma_log, zeros, bins = state
        sketch = cls()
        sketch._gamma_log = float(gamma_log)
        sketch.zeros = zeros
        sketch.bins = Counter({index: n for index, n in bins})
        sketch.count = zeros + sum(sketch.bins.values())
        return sketch

    @classmethod
    def from_bytes(cls, data: bytes) -> DDSketch:
        if not data or data[0] != _FORMAT_VERSION:
            raise ValueError("not a tracetap DDSketch (version byte)")
        sketch = cls()
        if len(data) < 9:
            raise ValueError("DDSketch bytes end inside the header")
        sketch._gamma_log = struct.unpack_from("<d", data, 1)[0]
        offset = 9
        sketch.zeros, offset = read_uvarint(data, offset)
        n, offset = read_uvarint(data, offset)
        index = 0
        for _ in range(n):
            delta, offset = read_uvarint(data, offset)
            count, offset = read_uvarint(data, offset)
            index += (delta >> 1) ^ -(delta & 1)
            sketch.bins[index] = count
        sketch.count = sketch.zeros + sum(sketch.bins.values())
        return sketch


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)
