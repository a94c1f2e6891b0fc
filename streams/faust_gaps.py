"""Every record of a partition reaches a Faust agent, in offset order: the records faust-streaming skips are read
again from Kafka with a consumer of the worker's own and handed to the agent before the record that showed the gap.

faust-streaming (0.11, on aiokafka) can skip records when a worker starts with a changelog to recover and its
group has no committed offsets yet: an agent saw offsets 0..66 of a partition, then 68. Faust's own `seek` does
not get them back reliably. Its fetch loop, part way through a batch it read before the seek (it waits there
while the agents' queue is full), sets the partition's read offset past the sought one again, and drops the
re-read records as already delivered: on a busy partition a guard that seeks dropped and re-sought for minutes.
Records skipped at a partition's end show no gap (no later record comes): a partition with records left that
sends none for a while is sought back instead, which is reliable there (no batch of its records is in flight).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition
from faust.types import TP, Message

from schemas.kafka import client_config
from tracetap.config import KafkaSettings

log = logging.getLogger("tracetap.streams.faust")

_READ_TIMEOUT_S = 30.0  # the missing records are in Kafka already (a later offset was delivered): this is a broker outage
_QUIET_S = 3.0  # a partition with records left that delivered none for this long had its end skipped


@dataclass(frozen=True, slots=True)
class Refilled:
    """A record the guard read itself, shaped as the agents read Faust's events (`event.message`). It is never
    the current event of a table write: the event that showed the gap, of the same partition, is."""

    message: Message


class OffsetGuard:
    """Per partition, the offset that must come next; a record past it brings the ones between, read directly."""

    def __init__(self, kafka: KafkaSettings, app_id: str, stats: Any, committed: Callable[[TP], int | None]) -> None:
        self._kafka, self._app_id = kafka, app_id
        self._committed = committed  # the group's committed offset of a partition: what an earlier worker finished
        self._stats = stats  # streams.faust_app.WorkerStats: offset_gaps, offset_gaps_unfilled, replayed
        self._next: dict[Any, int] = {}  # partition -> the offset that must come next
        self._last_record = time.monotonic()  # when any record last came
        self._sought: dict[Any, float] = {}  # partition -> when it was sought back, until its next record
        self._left: dict[Any, tuple[int, float]] = {}  # partition -> (records left, since when)
        self._ready = False  # Faust seeks every partition itself when a rebalance's recovery ends
        self._reader: Consumer | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracetap-gap-reader")

    async def admit_all(self, events: list[Any]) -> list[Any]:
        """The batch's events with the records Faust skipped before each, in order."""
        return [admitted for event in events for admitted in await self.admit(event)]

    async def admit(self, event: Any) -> list[Any]:
        """The events to process, in order: the records Faust skipped before this one, then this one; none for a
        record that comes again (after a seek back), as every offset before the next one has been processed."""
        message = event.message
        tp, offset = message.tp, message.offset
        expected = self._next.get(tp)
        self._last_record = time.monotonic()
        self._sought.pop(tp, None)
        if expected is not None and offset < expected:
            self._stats.replayed += 1
            return []
        self._next[tp] = offset + 1
        if expected is None or offset == expected:
            return [event]
        # After a restart Faust may deliver records from before the group's committed offset, then seek to it:
        # the records up to it were finished by the worker before (its states hold them), not skipped.
        start = max(expected, self._committed(tp) or 0)
        missing = await asyncio.get_running_loop().run_in_executor(self._thread, self._read, tp, start, offset) if start < offset else []
        if not missing:  # finished before, or offsets without records (transaction markers, a compacted topic)
            log.debug("offset gap with no record to read partition=%s/%d from=%d to=%d", tp.topic, tp.partition, expected, offset)
            return [event]
        self._stats.offset_gaps += 1
        log.warning("offset gap: records skipped by the consumer, read again directly partition=%s/%d from=%d to=%d records=%d",
                    tp.topic, tp.partition, start, offset, len(missing))
        return [*missing, event]

    async def seek_quiet_ends(self, partitions: Iterable[TP], left: Callable[[TP], int | None], seek: Callable[[TP, int], Awaitable[None]]) -> None:
        """Seek back each partition whose records `left` stayed the same, above 0, for _QUIET_S while no record
        came: Faust skipped its end. (While records come, a skipped end waits: a busy event loop keeps partitions
        waiting too, and a live partition's next record shows the gap.) Called every second or so."""
        now = time.monotonic()
        for tp in partitions:
            count = left(tp) or 0
            if self._left.get(tp, (None,))[0] != count:
                self._left[tp] = (count, now)
        if not self._ready or now - self._last_record < _QUIET_S:
            return
        for tp in partitions:
            count, since = self._left[tp]
            if not count or now - since < _QUIET_S or now - self._sought.get(tp, -_QUIET_S) < _QUIET_S:
                continue
            start = max(self._next.get(tp, 0), self._committed(tp) or 0)
            if tp not in self._sought:
                self._stats.offset_gaps += 1
                log.warning("offset gap: a partition's last records were not delivered, seeking back partition=%s/%d offset=%d left=%d",
                            tp.topic, tp.partition, start, count)
            self._sought[tp] = now
            await seek(tp, start)

    def forget(self) -> None:
        """At a rebalance: the group's committed offsets say where each partition starts again."""
        self._next.clear()
        self._sought.clear()
        self._left.clear()
        self._ready = False

    def ready(self) -> None:
        """The rebalance's recovery is over: partitions that stay quiet with records left may be sought back."""
        self._last_record = time.monotonic()
        self._ready = True

    def _read(self, tp: TP, start: int, end: int) -> list[Refilled]:
        """The records at offsets start..end-1 of the partition (in its thread: it blocks)."""
        if self._reader is None:
            # read_uncommitted, as Faust's own consumer reads (at-least-once): the same records it would have delivered
            self._reader = Consumer(client_config(self._kafka, **{
                "group.id": f"{self._app_id}-gap-reader-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                "enable.partition.eof": True, "isolation.level": "read_uncommitted", "fetch.wait.max.ms": 10}))
        self._reader.assign([TopicPartition(tp.topic, tp.partition, start)])
        records: list[Refilled] = []
        deadline = time.monotonic() + _READ_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                m = self._reader.poll(0.5)
                if m is None:
                    continue
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        break
                    log.warning("offset gap: reading the skipped records failed partition=%s/%d error=%s", tp.topic, tp.partition, m.error())
                    continue
                if m.offset() >= end:
                    break
                kind, millis = m.timestamp()
                records.append(Refilled(Message(m.topic(), m.partition(), m.offset(), millis / 1000.0 if millis > 0 else None, kind,
                                                m.headers(), m.key(), m.value(), None, tp=tp)))
            else:
                self._stats.offset_gaps_unfilled += 1
                log.error("offset gap: the skipped records did not come in %.0f s partition=%s/%d from=%d to=%d read=%d",
                          _READ_TIMEOUT_S, tp.topic, tp.partition, start, end, len(records))
        finally:
            self._reader.unassign()
        return records
