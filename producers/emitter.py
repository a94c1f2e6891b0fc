"""The agents' way to Kafka: a bounded in-process buffer between capture and the producer, a
sender thread that encodes and produces (so capture never waits on Avro or the network), and
counters for every record that does not arrive, reported as agent-stats events.

Accounting, per run: offered = delivered + queue_overflow + kafka_undelivered + undelivered_at_exit
+ invalid_records. Nothing is dropped silently.

High-rate capture offers raw kernel bytes instead of dicts (`offer_raw`, or a list of them at once with
`offer_raw_batch`): the topic's RawEncoder turns them into (key, Avro body) on the sender thread, so the
capture callback only copies bytes. The buffer's bound counts records, whichever way they were offered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from schemas.catalog import AGENT_STATS, TopicSpec
from schemas.producer import AvroProducer

log = logging.getLogger("tracetap.emitter")

_STOP = object()
_IDLE_S = 0.005  # how long the sender sleeps when the buffer is empty

# Raw event bytes -> (key, Avro body without the wire header or a record dict to encode with fastavro, event time in
# ns for the Kafka timestamp or None).
RawEncoder = Callable[[bytes], tuple[str | None, bytes | dict[str, Any], int | None]]


class Emitter:
    def __init__(self, producer: AvroProducer, *, agent: str, host: str, capacity: int = 100_000,
                 stats_interval_s: float = 10.0) -> None:
        self._producer = producer
        # A deque, not queue.Queue: append/popleft are atomic and far cheaper than Queue's locking;
        # the bound is checked before appending (racing offers may overshoot it by one each).
        self._buffer: deque[Any] = deque()
        self._capacity = capacity
        self._buffered = 0  # records in the buffer (a batch item holds many)
        self._raw_encoders: dict[str, RawEncoder] = {}
        self.agent = agent
        self.host = host
        self.counters: Counter[str] = Counter()  # whole-run totals
        self._interval: Counter[str] = Counter()  # since the last agent-stats record
        self._lock = threading.Lock()
        self._logged: set[str] = set()
        self.offered = 0
        self._offered_reported = 0
        self._stats_interval_s = stats_interval_s
        self._last_stats_ns = time.time_ns()
        self._sample_ratio = self._interval_ratio = 1.0
        self._thread = threading.Thread(target=self._send_loop, name=f"{agent}-emitter", daemon=True)
        self._thread.start()

    def register_raw(self, spec: TopicSpec, encode: RawEncoder) -> None:
        """Let `offer_raw` take raw bytes for this topic; `encode` runs on the sender thread."""
        self._raw_encoders[spec.name] = encode

    def offer(self, spec: TopicSpec, key: str, record: dict[str, Any] | None) -> bool:
        """Queue one record (None: a tombstone) without blocking capture; a full buffer counts it as overflowed."""
        return self._append((spec, key, record))

    def offer_raw(self, spec: TopicSpec, raw: bytes) -> bool:
        """Queue one raw event for the topic's registered RawEncoder."""
        return self._append((spec, None, raw))

    def offer_raw_batch(self, spec: TopicSpec, raws: list[bytes]) -> bool:
        """Queue raw events for the topic's RawEncoder as one item: one buffer operation for the lot."""
        return self._append((spec, None, raws), len(raws))

    def wait_for_room(self, stop: threading.Event | None = None) -> None:
        """Block until the buffer has room: for replays, which must not outrun the sender and overflow."""
        while self._buffered >= self._capacity and not (stop and stop.is_set()):
            time.sleep(_IDLE_S)

    def _append(self, item: tuple[TopicSpec, str | None, Any], records: int = 1) -> bool:
        with self._lock:  # capture and the resource scanner both offer
            self.offered += records
            if self._buffered + records > self._capacity:
                self.counters["queue_overflow"] += records
                self._interval["queue_overflow"] += records
                return False
            self._buffered += records
        self._buffer.append(item)
        return True

    @property
    def backlog(self) -> float:
        """How full the buffer to Kafka is, 0..1."""
        return self._buffered / self._capacity

    def note_sample_ratio(self, ratio: float) -> None:
        """The share of flows captured from now on; agent-stats reports the lowest of each interval."""
        with self._lock:
            self._sample_ratio = ratio
            self._interval_ratio = min(self._interval_ratio, ratio)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n
            self._interval[name] += n

    def close(self, timeout_s: float = 30.0) -> None:
        """Send what is buffered, a last stats record, and wait for Kafka's acknowledgements."""
        self._buffer.append(_STOP)
        self._thread.join(timeout_s)
        abandoned = 0
        while self._buffer:  # the sender could not finish in time: what is left is lost, and counted
            item = self._buffer.popleft()
            if item is not _STOP:
                abandoned += len(item[2]) if isinstance(item[2], list) else 1
        if abandoned:
            self.count("undelivered_at_exit", abandoned)
        self._emit_stats()
        try:
            self._producer.flush(timeout_s)
        except Exception as exc:  # reported, not raised: the counts below say what was lost
            log.error("final flush incomplete error=%s", exc)
        self._account_undelivered()
        pending = self._producer.pending()
        if pending:  # still unacknowledged when we had to go: lost, and said so
            self.count("undelivered_at_exit", pending)
        log.info("emitter closed agent=%s %s", self.agent, " ".join(f"{k}={v}" for k, v in sorted(self.totals().items())))

    def undelivered(self) -> dict[str, int]:
        """Captured records that did not reach Kafka, by why: overflowed, refused or timed out, unacknowledged at exit."""
        totals = self.totals()
        return {name: totals[name] for name in ("queue_overflow", "kafka_undelivered", "undelivered_at_exit") if totals.get(name)}

    def totals(self) -> dict[str, int]:
        """Whole-run counters; `delivered` counts captured records only, not agent-stats records."""
        with self._lock:
            totals = dict(self.counters)
            totals["offered"] = self.offered
        totals["delivered"] = self._captured(self._producer.delivered)
        return totals

    def _send_loop(self) -> None:
        buffer = self._buffer
        while True:
            if not buffer:
                time.sleep(_IDLE_S)
            for _ in range(min(len(buffer), 4096)):  # bounded, so stats stay on time under load
                item = buffer.popleft()
                if item is _STOP:
                    return
                if isinstance(item[2], list):
                    self._send_batch(item[0], item[2])
                    records = len(item[2])
                else:
                    self._send(*item)
                    records = 1
                with self._lock:
                    self._buffered -= records
            if time.time_ns() - self._last_stats_ns >= self._stats_interval_s * 1e9:
                self._emit_stats()

    def _send(self, spec: TopicSpec, key: str | None, record: Any) -> None:
        try:
            if record is None:  # a tombstone on a compacted topic
                self._producer.produce_encoded(spec, key, None)
            elif isinstance(record, bytes):
                key, value, time_ns = self._raw_encoders[spec.name](record)
                if isinstance(value, dict):
                    self._producer.produce(spec, key, value)
                else:
                    self._producer.produce_encoded(spec, key, self._producer.serializer(spec).frame(value), time_ns=time_ns)
            else:
                self._producer.produce(spec, key, record)
        except Exception as exc:  # an encoding bug or a garbled event must not stop capture: count, log once per kind
            self.count("invalid_records")
            self._log_once(type(exc).__name__, exc)

    def _send_batch(self, spec: TopicSpec, raws: list[bytes]) -> None:
        encode = self._raw_encoders[spec.name]
        produce = self._producer.produce_encoded
        frame = self._producer.serializer(spec).frame
        for raw in raws:
            try:
                key, value, time_ns = encode(raw)
                if isinstance(value, dict):
                    self._producer.produce(spec, key, value)
                else:
                    produce(spec, key, frame(value), time_ns=time_ns)
            except Exception as exc:  # as in _send: counted, logged once per kind, the rest of the batch goes on
                self.count("invalid_records")
                self._log_once(type(exc).__name__, exc)

    def _emit_stats(self) -> None:
        now = time.time_ns()
        self._account_undelivered()
        with self._lock:
            counters = dict(self._interval)
            self._interval.clear()
            offered = self.offered
            sample_ratio, self._interval_ratio = self._interval_ratio, self._sample_ratio
        counters["buffered"] = self._buffered
        counters["offered"] = offered - self._offered_reported
        self._offered_reported = offered
        record = {"host": self.host, "agent": self.agent, "time": now, "interval_ns": now - self._last_stats_ns, "counters": counters,
                  "sample_ratio": sample_ratio}
        self._last_stats_ns = now
        try:
            self._producer.produce(AGENT_STATS, f"{self.agent}|{self.host}", record)
        except Exception as exc:
            self._log_once("stats", exc)
        if any(counters.get(k) for k in ("queue_overflow", "kafka_undelivered", "data_lost", "lifecycle_lost")):
            log.warning("events lost agent=%s %s", self.agent, " ".join(f"{k}={v}" for k, v in sorted(counters.items())))

    def _account_undelivered(self) -> None:
        """Kafka delivery failures (e.g. message timeout during a long outage) become a counter."""
        failed = self._captured(self._producer.failed)
        with self._lock:
            new = failed - self.counters["kafka_undelivered"]
            if new > 0:
                self.counters["kafka_undelivered"] += new
                self._interval["kafka_undelivered"] += new

    def _captured(self, per_topic: Counter[str]) -> int:
        """A producer counter summed over the captured records' topics, leaving out our own stats."""
        stats_topic = self._producer.topic_name(AGENT_STATS)
        return sum(n for topic, n in per_topic.items() if topic != stats_topic)

    def _log_once(self, kind: str, exc: Exception) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.error("cannot produce record kind=%s error=%s", kind, exc, exc_info=True)
