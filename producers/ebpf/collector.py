"""In-collector mode (the seed's "Phase 2"): the agent parses L7 on the node with the core's
assembler and emits spans instead of raw socket data, cutting upstream bandwidth. The same
`tracetap.assembly` code the stream jobs run, so the spans are the same.
"""

from __future__ import annotations

from collections.abc import Callable

from tracetap.assembly import SocketAssembler
from tracetap.eventtime import EventClock
from tracetap.model import SocketData, Span

IDLE_SOCKET_NS = 120_000_000_000  # an assembler with nothing open, unused this long, is forgotten


class InCollector:
    def __init__(self, emit: Callable[[Span], None], clock: EventClock | None = None) -> None:
        self._emit = emit
        self._clock = clock or EventClock()
        self._sockets: dict[str, tuple[SocketAssembler, int]] = {}  # socket key -> (assembler, last event time)

    def add(self, record: dict) -> None:
        """One SocketDataEvent record (as decoded by DataEventEncoder.record)."""
        event = SocketData.from_record(record)
        self._clock.observe(event.end_ns)
        key = event.socket_key
        assembler = self._sockets.get(key, (None, 0))[0] or SocketAssembler()
        self._sockets[key] = (assembler, event.end_ns)
        for span in assembler.add(event):
            self._emit(span)

    def tick(self) -> None:
        """Time out unanswered requests at the current watermark and forget idle sockets."""
        watermark = self._clock.watermark_ns
        for key, (assembler, last_ns) in list(self._sockets.items()):
            for span in assembler.expire(watermark):
                self._emit(span)
            if assembler.idle and last_ns + IDLE_SOCKET_NS <= watermark:
                del self._sockets[key]

    def flush(self) -> None:
        """At exit: what is open ends as if its sockets closed now."""
        for assembler, last_ns in self._sockets.values():
            for span in assembler.close(last_ns):
                self._emit(span)
        self._sockets.clear()

    def __len__(self) -> int:
        return len(self._sockets)
