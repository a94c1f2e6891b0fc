"""Avro producer for catalog topics: serializers built once, delivery outcomes counted, flush checked.

Every component that writes to Kafka (agents, jobs, the dead-letter path, the demo) goes through it.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from confluent_kafka import KafkaError, Producer

from schemas.catalog import TopicSpec
from schemas.kafka import producer_config
from schemas.registry import SchemaRegistry
from schemas.serde import AvroSerializer
from tracetap.config import Settings
from tracetap.errors import ServerUnavailable

log = logging.getLogger("tracetap.producer")

_POLL_EVERY = 2000
_KAFKA_LOG = logging.getLogger("tracetap.kafka")  # librdkafka's own lines, through our log format


class DeliveryFailed(ServerUnavailable):
    """Records were not acknowledged by the broker before the flush timeout."""


class AvroProducer:
    def __init__(self, settings: Settings, registry: SchemaRegistry, **overrides: Any) -> None:
        self._prefix = settings.topics.prefix
        self._registry = registry
        self._auto_register = settings.registry.auto_register
        self._producer = Producer(producer_config(settings.kafka, error_cb=self._on_error, logger=_KAFKA_LOG, **overrides))
        self._serializers: dict[str, AvroSerializer] = {}
        self.delivered: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self._logged_errors: set[str] = set()
        self._unpolled = 0

    def serializer(self, spec: TopicSpec) -> AvroSerializer:
        serializer = self._serializers.get(spec.name)
        if serializer is None:
            serializer = AvroSerializer(self._registry, spec.value_subject(self._prefix), spec.schema(), auto_register=self._auto_register)
            self._serializers[spec.name] = serializer
        return serializer

    def topic_name(self, spec: TopicSpec) -> str:
        return spec.full_name(self._prefix)

    def produce(self, spec: TopicSpec, key: str | None, record: dict[str, Any]) -> None:
        """Encode and queue one record; waits for queue space rather than dropping."""
        time_ns = record.get(spec.time_field) if spec.time_field else None
        self.produce_encoded(spec, key, self.serializer(spec)(record), time_ns=time_ns)

    def produce_encoded(self, spec: TopicSpec, key: str | bytes | None, value: bytes | None, headers: dict[str, bytes] | None = None,
                        time_ns: int | None = None) -> None:
        """Queue one encoded record; `time_ns` (event time) becomes its Kafka timestamp, else the wall clock does."""
        topic = self.topic_name(spec)
        timestamp_ms = time_ns // 1_000_000 if time_ns else 0  # 0: librdkafka stamps the current time
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery,
                                       timestamp=timestamp_ms)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)
        self._unpolled += 1
        # Serve delivery callbacks in batches: poll() releases the GIL, and in a busy agent getting it back
        # can take a whole switch interval, so polling every 100 records starved the sender.
        if self._unpolled >= _POLL_EVERY:
            self._unpolled = 0
            self._producer.poll(0)

    def pending(self) -> int:
        """Records queued or in flight, not yet acknowledged or failed."""
        return len(self._producer)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for every queued record's outcome; raise if any is still undelivered."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise DeliveryFailed(f"{remaining} records not acknowledged by Kafka after {timeout_s:.0f} s "
                                 f"(delivered {sum(self.delivered.values())}, failed {sum(self.failed.values())})")
        if self.failed:
            raise DeliveryFailed(f"Kafka refused {sum(self.failed.values())} records: {dict(self.failed)}")

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            self.delivered[msg.topic()] += 1
            return
        self.failed[msg.topic()] += 1
        self._log_once(f"delivery:{err.name()}", "delivery failed topic=%s error=%s", msg.topic(), err.str())

    def _on_error(self, err: KafkaError) -> None:
        self._log_once(f"client:{err.name()}", "kafka client error error=%s fatal=%s", err.str(), err.fatal())

    def _log_once(self, kind: str, message: str, *args: Any) -> None:
        if kind not in self._logged_errors:
            self._logged_errors.add(kind)
            log.warning(message, *args)
