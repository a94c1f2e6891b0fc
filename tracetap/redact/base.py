"""What a redaction rule sees and returns: the bytes of one socket direction around the newest event, and
the spans to mask, with what to keep masking when a secret runs past the end of the captured bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

BLANK = b" \t"


class Until(NamedTuple):
    """A secret cut by the end of an event: keep masking the next bytes up to one of `stop`.

    `not_before_message`: the rule cannot tell a value's end from the end of its message (a form body), so
    the carry is dropped when the next event starts like a new HTTP message."""

    stop: bytes
    not_before_message: bool = False


# How far a secret runs past the end of the bytes a rule saw: None (it ended), a byte count, or Until.
More = int | Until | None


class Mask(NamedTuple):
    start: int
    end: int
    more: More = None


class Window:
    """One scan: `data` is the carried tail of the stream direction followed by the new event.

    `new_at` is where the new event starts in `data`; `stream_at` is the stream offset of data[0] (every
    byte the socket moved counts, captured or not). `lower` is data lowercased, for case-free names.
    `fresh`: data[0] starts a syscall after nothing carried (a line start and likely a message start).
    `state` is the per-direction memory of rules that follow message framing (PostgreSQL, MySQL, Kafka).
    """

    __slots__ = ("data", "lower", "new_at", "stream_at", "fresh", "state", "masks", "keep_from", "hints")

    def __init__(self, data: bytes, new_at: int, stream_at: int, fresh: bool, state: dict[str, Any]) -> None:
        self.data = data
        self.lower = data.lower()
        self.new_at = new_at
        self.stream_at = stream_at
        self.fresh = fresh
        self.state = state
        self.masks: list[Mask] = []
        self.keep_from: int | None = None  # the earliest byte a rule needs to see again with the next event
        self.hints: dict[Any, bool] = {}  # prefilter answers shared by the rules of one scan

    def keep(self, at: int) -> None:
        """A rule saw the start of something the event cut (a header line, a command): carry it over."""
        if self.keep_from is None or at < self.keep_from:
            self.keep_from = at

    def mask(self, start: int, end: int, more: More = None) -> None:
        if end > start or more:
            self.masks.append(Mask(start, end, more))

    def mask_open(self, start: int, end: int, total_end: int) -> None:
        """Mask [start, total_end) of which the window holds up to `end`: the rest is carried as a count."""
        size = len(self.data)
        if total_end <= size:
            self.mask(start, total_end)
        else:
            self.mask(start, size, total_end - size)


def line_end(data: bytes, start: int) -> tuple[int, int]:
    """(end of the line's content, index of its '\\n' or len(data)): a cut line ends at the data's end."""
    eol = data.find(b"\n", start)
    if eol == -1:
        eol = len(data)
    end = eol - 1 if eol > start and data[eol - 1] == 0x0D else eol
    return end, eol


def strip(data: bytes, start: int, end: int) -> tuple[int, int]:
    while start < end and data[start] in BLANK:
        start += 1
    while end > start and data[end - 1] in BLANK:
        end -= 1
    return start, end


def run_end(pattern: "re.Pattern[bytes]", data: bytes, start: int) -> int:
    """End of the run `pattern` (one character class with `*`, so linear) matches from `start`."""
    return pattern.match(data, start).end()


Scan = Callable[["Window"], None]
# What a protocol module declares as its redaction (its `redaction` attribute): given the node's RedactionRules
# (tracetap/redact/__init__.py), the scans to run; none when the rules switch it off.
Rule = Callable[[Any], tuple[Scan, ...]]
