"""In-collector mode (the seed's "Phase 2"), the agents' default: the stream jobs' flow stage
(`tracetap.stages.FlowStage`) runs on the node, so one span per request crosses Kafka (to
`tracetap.raw.spans`) instead of every syscall or packet. The same code, configuration and event-time
rules as the stream jobs, so a span is the same whether it was assembled on the node or in the stream.
The stream jobs pass these spans on to their conversation stage, where they meet the spans of other nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tracetap.eventtime import EventClock
from tracetap.model import Span
from tracetap.stages import FlowStage, StageConfig

TICK_NS = 500_000_000  # timeouts and response lingers end within this much of their watermark


class NodeCollector:
    """Raw records in (socket data, lifecycle events, packet summaries, each with its flow key), spans out
    through `emit`. Not thread-safe: one per capture thread."""

    def __init__(self, emit: Callable[[Span], None], config: StageConfig = StageConfig()) -> None:
        self._emit = emit
        self._config = config
        self._clock = EventClock(config.max_out_of_order_ns, config.allowed_lateness_ns)
        self._flows: dict[str, FlowStage] = {}
        self._ticked_ns = 0  # the watermark of the last pass
        self.cut_by_loss = 0  # requests dropped because the kernel lost events of their exchange
        self.abandoned = 0  # requests unanswered when the agent stopped

    def add(self, kind: str, key: str | None, record: dict[str, Any]) -> None:
        """One raw record (`kind`: socket_data, lifecycle or packet, as FlowStage's methods), decoded."""
        self._clock.observe(FlowStage.event_time_ns(kind, record))
        stage = self._flows.get(key or "")
        if stage is None:
            stage = self._flows[key or ""] = FlowStage(self._config)
        cut = _cut(stage)
        spans = getattr(stage, kind)(record)
        self.cut_by_loss += _cut(stage) - cut
        for span in spans:
            self._emit(span)

    def tick(self, wall_ns: int | None = None) -> None:
        """Closes, timeouts and idle assemblers due at the watermark; a flow left with nothing is forgotten. The
        watermark is a stream job's (the latest event time seen, less the out-of-order bound), and for a live
        capture (`wall_ns`: the node's clock) at least the wall clock less that bound and the allowed lateness, so a
        quiet node's last response still ends. At most one pass over the flows per TICK_NS of watermark."""
        watermark = self._clock.watermark_ns
        if wall_ns is not None:
            watermark = max(watermark, wall_ns - self._config.max_out_of_order_ns - self._config.allowed_lateness_ns)
        if watermark < self._ticked_ns + TICK_NS:
            return
        self._ticked_ns = watermark
        for key, stage in list(self._flows.items()):
            due = stage.next_deadline_ns()
            if due is not None and due <= watermark:
                cut = _cut(stage)
                spans = stage.advance(watermark)
                self.cut_by_loss += _cut(stage) - cut
                for span in spans:
                    self._emit(span)
            if stage.empty:
                del self._flows[key]

    def flush(self) -> None:
        """At exit: closes already seen apply, responses in progress end as captured; unanswered requests are counted
        in `abandoned`, not reported as failures (the agent stopping says nothing about how they ended)."""
        for stage in self._flows.values():
            spans, unanswered = stage.abandon()
            self.abandoned += unanswered
            for span in spans:
                self._emit(span)
        self._flows.clear()

    def __len__(self) -> int:
        return len(self._flows)


def _cut(stage: FlowStage) -> int:
    return sum(socket.counters.cut_by_loss for socket in stage.sockets.values())
