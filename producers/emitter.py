"""The agents' way to Kafka: a bounded in-process buffer between capture and the producer, a
sender thread that encodes and produces (so capture never waits on Avro or the network), and
counters for every record that does not arrive, reported as agent-stats events.

Accounting, per run: offered = delivered + queue_overflow + kafka_undelivered + undelivered_at_exit
+ invalid_records. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from typing import Any

from schemas.catalog import AGENT_STATS, TopicSpec
from schemas.producer import AvroProducer

log = logging.getLogger("tracetap.emitter")

_STOP = object()


class Emitter:
    def __init__(self, producer: AvroProducer, *, agent: str, host: str, capacity: int = 100_000,
                 stats_interval_s: float = 10.0) -> None:
        self._producer = producer
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
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
        self._thread = threading.Thread(target=self._send_loop, name=f"{agent}-emitter", daemon=True)
        self._thread.start()

    def offer(self, spec: TopicSpec, key: str, record: dict[str, Any] | None) -> bool:
        """Queue one record without blocking capture; a full buffer counts it as overflowed."""
        with self._lock:  # capture and the resource scanner both offer
            self.offered += 1
        try:
            self._queue.put_nowait((spec, key, record))
            return True
        except queue.Full:
            self.count("queue_overflow")
            return False

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n
            self._interval[name] += n

    def close(self, timeout_s: float = 30.0) -> None:
        """Send what is buffered, a last stats record, and wait for Kafka's acknowledgements."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        abandoned = 0
        while True:  # the sender could not finish in time: what is left is lost, and counted
            try:
                abandoned += self._queue.get_nowait() is not _STOP
            except queue.Empty:
                break
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

    def totals(self) -> dict[str, int]:
        """Whole-run counters; `delivered` counts captured records only, not agent-stats records."""
        with self._lock:
            totals = dict(self.counters)
            totals["offered"] = self.offered
        totals["delivered"] = self._captured(self._producer.delivered)
        return totals

    def _send_loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is not None:
                spec, key, record = item
                try:
                    if record is None:  # a tombstone on a compacted topic
                        self._producer.produce_encoded(spec, key, None)
                    else:
                        self._producer.produce(spec, key, record)
                except Exception as exc:  # an encoding bug must not stop capture: count, log once per kind
                    self.count("invalid_records")
                    self._log_once(type(exc).__name__, exc)
            if time.time_ns() - self._last_stats_ns >= self._stats_interval_s * 1e9:
                self._emit_stats()

    def _emit_stats(self) -> None:
        now = time.time_ns()
        self._account_undelivered()
        with self._lock:
            counters = dict(self._interval)
            self._interval.clear()
            offered = self.offered
        counters["buffered"] = self._queue.qsize()
        counters["offered"] = offered - self._offered_reported
        self._offered_reported = offered
        record = {"host": self.host, "agent": self.agent, "time": now, "interval_ns": now - self._last_stats_ns, "counters": counters}
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
            log.error("cannot produce record kind=%s error=%s", kind, exc)
