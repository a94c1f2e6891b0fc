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
        self.cut_by_loss = 0  # requests dropped because the kernel lost events of their exchange
        self.abandoned = 0  # requests unanswered when the agent stopped

    def add(self, record: dict) -> None:
        """One SocketDataEvent record (as decoded by DataEventEncoder.record)."""
        event = SocketData.from_record(record)
        self._clock.observe(event.end_ns)
        key = event.socket_key
        assembler = self._sockets.get(key, (None, 0))[0] or SocketAssembler()
        self._sockets[key] = (assembler, event.end_ns)
        cut = assembler.counters.cut_by_loss
        for span in assembler.add(event):
            self._emit(span)
        self.cut_by_loss += assembler.counters.cut_by_loss - cut

    def tick(self) -> None:
        """Time out unanswered requests at the current watermark and forget idle sockets."""
        watermark = self._clock.watermark_ns
        for key, (assembler, last_ns) in list(self._sockets.items()):
            for span in assembler.expire(watermark):
                self._emit(span)
            if assembler.idle and last_ns + IDLE_SOCKET_NS <= watermark:
                del self._sockets[key]

    def flush(self) -> None:
        """At exit: responses in progress end as captured; unanswered requests are counted in `abandoned`, not
        reported as failures (the agent stopping says nothing about how they ended)."""
        for assembler, _ in self._sockets.values():
            for span in assembler.abandon():
                self._emit(span)
            self.abandoned += assembler.counters.abandoned
        self._sockets.clear()

    def __len__(self) -> int:
        return len(self._sockets)
