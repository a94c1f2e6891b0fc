"""`tracetap sink elasticsearch`: output topics into Elasticsearch, at-least-once with idempotent ids.

Offsets are committed only after Elasticsearch acknowledged the batch; each document's _id is the
record's deterministic id, so a re-delivered record overwrites itself instead of duplicating.
Undecodable and rejected records go to the dead-letter topic with the reason.
"""

from __future__ import annotations

import base64
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition
from elasticsearch import ApiError, Elasticsearch
from elasticsearch import ConnectionError as EsConnectionError

from schemas.catalog import ALERTS, NETWORK_METRICS, PATHS, RED_METRICS, SPANS, TopicSpec
from schemas.deadletter import DeadLetters
from schemas.kafka import consumer_config
from schemas.producer import AvroProducer
from schemas.registry import SchemaRegistry
from schemas.serde import AvroDeserializer, UndecodableRecord
from tracetap.config import ElasticsearchSettings, Settings
from tracetap.errors import ConfigError

log = logging.getLogger("tracetap.sink.elasticsearch")

COMPONENT = "sink.elasticsearch"


@dataclass(frozen=True, slots=True)
class IndexedType:
    """How one output topic maps to documents: which field is the _id and which the @timestamp."""

    topic: TopicSpec
    id_field: str
    time_field: str
    time_unit_ns: int  # 1 for timestamp-nanos fields, 1_000_000 for timestamp-millis


INDEXED_TYPES = (
    IndexedType(SPANS, "span_id", "start_time", 1),
    IndexedType(PATHS, "path_id", "start_time", 1),
    IndexedType(RED_METRICS, "metric_id", "window_start", 1_000_000),
    IndexedType(NETWORK_METRICS, "metric_id", "window_start", 1_000_000),
    IndexedType(ALERTS, "alert_id", "time", 1),
)


@dataclass
class SinkReport:
    indexed: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    retries: int = 0

    def summary(self) -> str:
        indexed = ", ".join(f"{t}={n}" for t, n in sorted(self.indexed.items())) or "nothing"
        dead = ", ".join(f"{r}={n}" for r, n in sorted(self.dead_lettered.items())) or "none"
        return f"indexed {sum(self.indexed.values())} documents ({indexed}) in {self.batches} batches; dead-lettered: {dead}; retries: {self.retries}"


def es_client(settings: ElasticsearchSettings) -> Elasticsearch:
    kwargs: dict[str, Any] = {"request_timeout": settings.request_timeout_s, "verify_certs": settings.verify_certs}
    if settings.api_key:
        kwargs["api_key"] = str(settings.api_key)
    elif settings.username:
        kwargs["basic_auth"] = (settings.username, str(settings.password))
    if settings.ca_certs:
        kwargs["ca_certs"] = str(settings.ca_certs)
    return Elasticsearch(settings.hosts, **kwargs)


def index_name(settings: ElasticsearchSettings, spec: TopicSpec) -> str:
    return f"{settings.index_prefix}-{spec.name}"


def install_templates(es: Elasticsearch, settings: ElasticsearchSettings, types: tuple[IndexedType, ...] = INDEXED_TYPES) -> None:
    """One index template per record type (idempotent): ids and names as keyword, addresses as ip,
    @timestamp in nanoseconds."""
    for indexed in types:
        name = index_name(settings, indexed.topic)
        es.indices.put_index_template(
            name=name,
            index_patterns=[f"{name}*"],
            priority=200,
            template={
                "settings": {"number_of_shards": 1, "number_of_replicas": 0},
                "mappings": {
                    "dynamic_templates": [
                        {"addresses": {"match": "*_ip", "mapping": {"type": "ip"}}},
                        {"strings": {"match_mapping_type": "string", "mapping": {"type": "keyword", "ignore_above": 4096}}},
                    ],
                    "properties": {"@timestamp": {"type": "date_nanos"}},
                },
            },
        )


def to_document(indexed: IndexedType, record: dict[str, Any]) -> dict[str, Any]:
    doc = {k: (base64.b64encode(v).decode() if isinstance(v, bytes) else v) for k, v in record.items()}
    doc["@timestamp"] = _iso_nanos(record[indexed.time_field] * indexed.time_unit_ns)
    return doc


def _iso_nanos(epoch_ns: int) -> str:
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def run_sink(settings: Settings, topics: list[str] | None = None, group_id: str = "tracetap-sink-elasticsearch",
             stop_when_idle_s: float | None = None, batch_size: int = 1000) -> SinkReport:
    """Consume, index, commit; until interrupted or, with stop_when_idle_s, until nothing arrives for that long."""
    types = tuple(t for t in INDEXED_TYPES if topics is None or t.topic.name in topics)
    unknown = set(topics or ()) - {t.topic.name for t in types}
    if unknown:
        raise ConfigError("--topic", f"{sorted(unknown)} not indexable; choose from {[t.topic.name for t in INDEXED_TYPES]}")
    by_topic = {t.topic.full_name(settings.topics.prefix): t for t in types}
    es = es_client(settings.elasticsearch)
    registry = SchemaRegistry(settings.registry)
    producer = AvroProducer(settings, registry)
    dead_letters = DeadLetters(producer, COMPONENT)
    decode = AvroDeserializer(registry)
    _retry(lambda: install_templates(es, settings.elasticsearch, types), "install index templates", SinkReport())
    consumer = Consumer(consumer_config(settings.kafka, group_id, logger=logging.getLogger("tracetap.kafka")))
    assigned = []  # idle time counts only once partitions are assigned (a group join takes seconds)

    def on_assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned count=%d", len(partitions))
        assigned.append(time.monotonic())

    consumer.subscribe(list(by_topic), on_assign=on_assign)
    report = SinkReport()
    idle_since = time.monotonic()
    try:
        while True:
            messages = consumer.consume(batch_size, timeout=0.5)
            if not messages:
                idle_from = max(idle_since, assigned[-1]) if assigned else None
                if stop_when_idle_s is not None and idle_from is not None and time.monotonic() - idle_from > stop_when_idle_s:
                    break
                continue
            idle_since = time.monotonic()
            actions: list[tuple[Any, IndexedType, dict[str, Any]]] = []
            for message in messages:
                if message.error():
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("consume error error=%s", message.error().str())
                    continue
                indexed = by_topic[message.topic()]
                try:
                    actions.append((message, indexed, to_document(indexed, decode(message.value()))))
                except UndecodableRecord as exc:
                    dead_letters.send(message, exc.reason.value, exc.detail)
            if actions:
                _index_batch(es, settings.elasticsearch, actions, dead_letters, report)
            producer.flush()  # dead letters are durable before the offsets that skip them are committed
            consumer.commit(offsets=_next_offsets(messages), asynchronous=False)
            report.batches += 1
    except KeyboardInterrupt:
        log.info("interrupted, stopping summary=%r", report.summary())
    finally:
        consumer.close()
        report.dead_lettered.update(dead_letters.counts)
    return report


def _index_batch(es: Elasticsearch, settings: ElasticsearchSettings, actions: list[tuple[Any, IndexedType, dict[str, Any]]],
                 dead_letters: DeadLetters, report: SinkReport) -> None:
    operations: list[dict[str, Any]] = []
    for _, indexed, doc in actions:
        operations.append({"index": {"_index": index_name(settings, indexed.topic), "_id": doc[indexed.id_field]}})
        operations.append(doc)
    response = _retry(lambda: es.bulk(operations=operations), "bulk index", report)
    for (message, indexed, doc), item in zip(actions, response["items"]):
        result = item["index"]
        if result.get("error"):
            if result["status"] == 429 or result["status"] >= 500:
                # A transient per-document failure: retry that document alone until it lands.
                _retry(lambda: es.index(index=index_name(settings, indexed.topic), id=result["_id"], document=doc),
                       "re-index a document", report)
            else:
                error = result["error"]
                dead_letters.send(message, "REJECTED_BY_SINK", f"{error.get('type')}: {error.get('reason')}")
                continue
        report.indexed[indexed.topic.name] += 1


def _retry(call: Any, what: str, report: SinkReport, max_backoff_s: float = 30.0) -> Any:
    """Retry while Elasticsearch is unreachable or overloaded, with exponential backoff and jitter;
    nothing is dropped and offsets stay uncommitted meanwhile."""
    backoff = 0.5
    while True:
        try:
            return call()
        except (EsConnectionError, ApiError) as exc:
            status = getattr(exc, "status_code", None) or getattr(getattr(exc, "meta", None), "status", None)
            if isinstance(exc, ApiError) and status is not None and status < 500 and status != 429:
                raise
            report.retries += 1
            log.warning("elasticsearch unavailable, retrying action=%s in_s=%.1f error=%s", what, backoff, type(exc).__name__)
            time.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, max_backoff_s)


def _next_offsets(messages: list[Any]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for message in messages:
        if not message.error():
            last[(message.topic(), message.partition())] = message.offset()
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]
