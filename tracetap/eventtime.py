"""Event time: a watermark with bounded out-of-orderness, and the allowed lateness past it.

The watermark is a function of the event times seen so far (max seen - bound), so two engines fed the
same per-key order agree on it, and so on every timeout and window close that depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class EventClock:
    max_out_of_order_ns: int = 2_000_000_000
    allowed_lateness_ns: int = 5_000_000_000
    max_seen_ns: int = 0
    late: int = 0  # events older than the watermark minus the allowed lateness

    @property
    def watermark_ns(self) -> int:
        return self.max_seen_ns - self.max_out_of_order_ns

    def observe(self, time_ns: int) -> bool:
        """Advance with one event; False (and counted) when it is late beyond the allowed lateness."""
        if time_ns < self.watermark_ns - self.allowed_lateness_ns:
            self.late += 1
            return False
        self.max_seen_ns = max(self.max_seen_ns, time_ns)
        return True


@dataclass(slots=True)
class PartitionClocks:
    """One EventClock per input partition (Kafka orders records only within one); the stage's watermark is
    the lowest of them, as Flink's per-partition watermarks. Lateness is judged against the record's own
    partition, so a partition that is behind the others is slow, not late."""

    max_out_of_order_ns: int = 2_000_000_000
    allowed_lateness_ns: int = 5_000_000_000
    clocks: dict[str, EventClock] = field(default_factory=dict)  # each counts its own late records

    def observe(self, partition: str, time_ns: int) -> bool:
        clock = self.clocks.get(partition)
        if clock is None:
            clock = self.clocks[partition] = EventClock(self.max_out_of_order_ns, self.allowed_lateness_ns)
        return clock.observe(time_ns)

    @property
    def watermark_ns(self) -> int:
        return min((c.watermark_ns for c in self.clocks.values()), default=0)

    def to_state(self) -> dict[str, Any]:
        """JSON-ready data: each partition's max seen time and late count (the bounds are configuration)."""
        return {"partitions": {p: [c.max_seen_ns, c.late] for p, c in self.clocks.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        self.clocks = {p: EventClock(self.max_out_of_order_ns, self.allowed_lateness_ns, max_seen, late)
                       for p, (max_seen, late) in state["partitions"].items()}

    @property
    def max_seen_ns(self) -> int:
        return max((c.max_seen_ns for c in self.clocks.values()), default=0)


@dataclass(slots=True)
class EngineClock:
    """The watermark as an engine computes it (Flink: the lowest of its inputs' watermarks), set by the engine
    before each call; lateness is judged against it, as PartitionClocks does against its own."""

    allowed_lateness_ns: int = 5_000_000_000
    watermark_ns: int = 0
    max_seen_ns: int = 0
    late: int = 0

    def observe(self, partition: str, time_ns: int) -> bool:
        if time_ns < self.watermark_ns - self.allowed_lateness_ns:
            self.late += 1
            return False
        self.max_seen_ns = max(self.max_seen_ns, time_ns)
        return True

    def to_state(self) -> dict[str, Any]:
        return {"engine": [self.watermark_ns, self.max_seen_ns, self.late]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.watermark_ns, self.max_seen_ns, self.late = state["engine"]
