"""`tracetap sink elasticsearch`: output topics into Elasticsearch, at-least-once with idempotent ids.

Offsets are committed only after Elasticsearch acknowledged the batch; each document's _id is the
record's deterministic id, so a re-delivered record overwrites itself instead of duplicating.
Undecodable and rejected records go to the dead-letter topic with the reason.
"""

from __future__ import annotations

import base64
import calendar
import logging
import random
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from elasticsearch import ApiError, Elasticsearch
from elasticsearch import ConnectionError as EsConnectionError
from elasticsearch.serializer import OrjsonSerializer

from schemas.catalog import ALERTS, DEAD_LETTER, NETWORK_METRICS, PATHS, PROFILES, RED_METRICS, SPANS, TopicSpec
from schemas.deadletter import DeadLetters
from schemas.kafka import consumer_config
from schemas.preflight import check_kafka
from schemas.producer import AvroProducer
from schemas.registry import SchemaRegistry
from schemas.serde import AvroDeserializer, UndecodableRecord
from sinks.mappings import index_mapping
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


Action = tuple[Any, "IndexedType", bytes]  # the message, its type, its two NDJSON lines (action and document)

INDEXED_TYPES = (
    IndexedType(SPANS, "span_id", "start_time", 1),
    IndexedType(PATHS, "path_id", "start_time", 1),
    IndexedType(RED_METRICS, "metric_id", "window_start", 1_000_000),
    IndexedType(NETWORK_METRICS, "metric_id", "window_start", 1_000_000),
    IndexedType(ALERTS, "alert_id", "time", 1),
    IndexedType(PROFILES, "profile_id", "window_start", 1),
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
    # orjson: bulk bodies are the sink's largest CPU cost after decoding, and json.dumps holds the GIL 3-4x as long
    kwargs: dict[str, Any] = {"request_timeout": settings.request_timeout_s, "verify_certs": settings.verify_certs,
                              "serializer": OrjsonSerializer()}
    if settings.api_key:
        kwargs["api_key"] = str(settings.api_key)
    elif settings.username:
        kwargs["basic_auth"] = (settings.username, str(settings.password))
    if settings.ca_certs:
        kwargs["ca_certs"] = str(settings.ca_certs)
    return Elasticsearch(settings.hosts, **kwargs)


def index_name(settings: ElasticsearchSettings, spec: TopicSpec) -> str:
    """The pattern of a record type's daily indices (what searches and Kibana data views use)."""
    return f"{index_base(settings, spec)}-*"


def index_base(settings: ElasticsearchSettings, spec: TopicSpec) -> str:
    return f"{settings.index_prefix}-{spec.name}"


def daily_index(settings: ElasticsearchSettings, spec: TopicSpec, time_ns: int) -> str:
    """The index a document goes to: one per record type and UTC day of its own time, so a re-delivered record
    lands in the same index under the same _id, and a day's index is dropped whole once it is past retention."""
    return f"{index_base(settings, spec)}-{_day(time_ns // 86_400_000_000_000)}"


@cache
def _day(day: int) -> str:
    return time.strftime("%Y.%m.%d", time.gmtime(day * 86400))


def install_templates(es: Elasticsearch, settings: ElasticsearchSettings, types: tuple[IndexedType, ...] = INDEXED_TYPES) -> None:
    """One index template per record type (idempotent), with the explicit mapping derived from its schema; the
    daily indices that already exist get the fields a newer schema added (their mapping is strict, so a record
    with a new field would be refused until the next day's index)."""
    for indexed in types:
        base = index_base(settings, indexed.topic)
        mapping = index_mapping(indexed.topic.name, indexed.topic.schema())
        es.indices.put_mapping(index=f"{base}-*", allow_no_indices=True, properties=mapping["properties"])
        es.indices.put_index_template(
            name=base,
            index_patterns=[f"{base}-*"],
            priority=200,
            template={
                "settings": {"number_of_shards": 1, "number_of_replicas": settings.replicas},
                "mappings": mapping,
            },
            meta={"managed_by": "tracetap", "schema": indexed.topic.value_schema},
        )


def apply_retention(es: Elasticsearch, settings: ElasticsearchSettings, types: tuple[IndexedType, ...] = INDEXED_TYPES,
                    now_s: float | None = None) -> list[str]:
    """Delete the daily indices older than each type's retention_days; returns their names."""
    today = (now_s if now_s is not None else time.time()) // 86400
    doomed = []
    for indexed in types:
        days = settings.retention_days.get(indexed.topic.name, 0)
        if not days:
            continue
        base = index_base(settings, indexed.topic)
        for name in es.indices.get(index=f"{base}-*", expand_wildcards="open,closed", allow_no_indices=True):
            try:
                day = calendar.timegm(time.strptime(name.removeprefix(base + "-"), "%Y.%m.%d"))
            except ValueError:
                continue  # not one of ours
            if today - day // 86400 > days:
                doomed.append(name)
    if doomed:
        es.indices.delete(index=",".join(doomed))
        log.info("retention: deleted indices count=%d names=%s", len(doomed), ",".join(doomed))
    return doomed


def to_document(indexed: IndexedType, record: dict[str, Any]) -> dict[str, Any]:
    """The record as its document, in place: nanosecond times as ISO strings (date_nanos; a JSON number would be
    read as milliseconds), bytes as base64, and @timestamp."""
    nanos, binary = _shape(indexed.topic)
    for name in nanos:
        value = record.get(name)
        if value is not None:
            record[name] = iso_nanos(value)
    for name in binary:
        value = record.get(name)
        if value is not None:
            record[name] = base64.b64encode(value).decode()
    stamp = record[indexed.time_field]
    record["@timestamp"] = stamp if indexed.time_field in nanos else iso_nanos(stamp * indexed.time_unit_ns)
    return record


@cache
def _shape(spec: TopicSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The schema's timestamp-nanos fields and its bytes fields."""
    def kinds(t: Any) -> set[str]:
        if isinstance(t, list):
            return set().union(*(kinds(x) for x in t))
        if isinstance(t, dict):
            return {t.get("logicalType") or t["type"]}
        return {t}
    fields = [(f["name"], kinds(f["type"])) for f in spec.schema()["fields"]]
    return tuple(n for n, k in fields if "timestamp-nanos" in k), tuple(n for n, k in fields if "bytes" in k)


_SECONDS: dict[int, str] = {}  # epoch second -> its ISO text: records of a batch share a few seconds


def iso_nanos(epoch_ns: int) -> str:
    """Epoch nanoseconds as the ISO text a date_nanos field takes (and a range query on it)."""
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    text = _SECONDS.get(seconds)
    if text is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        text = _SECONDS[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{nanos:09d}Z"


class _Batch:
    """One bulk request: the messages it covers (dead-lettered ones included, for the commit) and its actions."""

    __slots__ = ("messages", "actions", "submitted", "retried")

    def __init__(self, messages: list[Any]) -> None:
        self.messages = messages
        self.actions: list[Action] = []
        self.submitted: list[tuple[list[Action], Any]] = []
        self.retried = False  # Elasticsearch refused it for a while: the partitions were paused meanwhile

    def done(self) -> bool:
        return all(future.done() for _, future in self.submitted)


def run_sink(settings: Settings, topics: list[str] | None = None, group_id: str = "tracetap-sink-elasticsearch",
             stop_when_idle_s: float | None = None, retention_every_s: float = 3600.0) -> SinkReport:
    """Consume, index, commit; until interrupted or, with stop_when_idle_s, until nothing arrives for that long.

    Each consume of up to bulk_actions messages becomes one bulk request; bulk_concurrency of them are in flight
    while the next is decoded, so Elasticsearch never waits on the sink between requests. Requests are finished,
    and their offsets committed, in the order they were read. While Elasticsearch is unreachable the consumer's
    partitions are paused (it stays in its group, polling) and the oldest request is retried with backoff; nothing
    past the requests in hand is read until they are indexed."""
    types = tuple(t for t in INDEXED_TYPES if topics is None or t.topic.name in topics)
    unknown = set(topics or ()) - {t.topic.name for t in types}
    if unknown:
        raise ConfigError("--topic", f"{sorted(unknown)} not indexable; choose from {[t.topic.name for t in INDEXED_TYPES]}")
    es_settings = settings.elasticsearch
    by_topic = {t.topic.full_name(settings.topics.prefix): t for t in types}
    check_kafka(settings.kafka, [*by_topic, DEAD_LETTER.full_name(settings.topics.prefix)])
    es = es_client(es_settings)
    registry = SchemaRegistry(settings.registry)
    producer = AvroProducer(settings, registry)
    dead_letters = DeadLetters(producer, COMPONENT)
    decode = AvroDeserializer(registry)
    report = SinkReport()

    def on_commit(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None:  # a rebalance took the partitions meanwhile: their new owner indexes them again
            log.warning("offsets not committed (partitions moved to another sink; re-indexing is idempotent) error=%s", error.str())

    consumer = Consumer(consumer_config(settings.kafka, group_id, logger=logging.getLogger("tracetap.kafka"), on_commit=on_commit))
    held: list[Any] = []  # messages a poll returned while the partitions were paused: processed next
    pool = ThreadPoolExecutor(max_workers=es_settings.bulk_concurrency, thread_name_prefix="bulk")

    def keep_alive() -> None:
        """While waiting on Elasticsearch: stay in the consumer group, fetch nothing."""
        assignment = consumer.assignment()
        if assignment:
            consumer.pause(assignment)
        message = consumer.poll(0)
        if message is not None and not message.error():
            held.append(message)

    _retry(lambda: install_templates(es, es_settings, types), "install index templates", report, keep_alive=None)
    last_retention = 0.0
    assigned = []  # idle time counts only once partitions are assigned (a group join takes seconds)

    def on_assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned count=%d", len(partitions))
        assigned.append(time.monotonic())

    def on_revoke(consumer: Consumer, partitions: list[TopicPartition]) -> None:
        held.clear()  # not ours any more; their offsets were not committed, so the new owner reads them
        log.info("partitions revoked count=%d", len(partitions))

    consumer.subscribe(list(by_topic), on_assign=on_assign, on_revoke=on_revoke)
    idle_since = time.monotonic()
    window: deque[_Batch] = deque()  # submitted to Elasticsearch, oldest first
    committed: dict[tuple[str, int], int] = {}  # the next offset per partition, committed asynchronously
    flushed = [0]  # dead letters known durable

    def finish(batch: _Batch) -> None:
        nonlocal idle_since
        _finish_batch(es, es_settings, batch, pool, dead_letters, report, keep_alive)
        if sum(dead_letters.counts.values()) != flushed[0]:
            producer.flush()  # dead letters are durable before the offsets that skip them are committed
            flushed[0] = sum(dead_letters.counts.values())
        offsets = _next_offsets(batch.messages)
        if offsets:
            committed.update(((tp.topic, tp.partition), tp.offset) for tp in offsets)
            consumer.commit(offsets=offsets, asynchronous=True)
        if batch.retried:
            paused = consumer.assignment()
            if paused:
                consumer.resume(paused)
            idle_since = time.monotonic()  # the wait on Elasticsearch is not idleness: the resumed partitions may hold more
        report.batches += 1

    def build(messages: list[Any]) -> _Batch:
        batch = _Batch(messages)
        for message in messages:
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error error=%s", message.error().str())
                continue
            indexed = by_topic[message.topic()]
            try:
                record = decode(message.value())
                time_ns = record[indexed.time_field] * indexed.time_unit_ns
                doc = to_document(indexed, record)
            except UndecodableRecord as exc:
                dead_letters.send(message, exc.reason.value, exc.detail)
                continue
            index = daily_index(es_settings, indexed.topic, time_ns)
            head = _ACTION_HEAD[index] if index in _ACTION_HEAD else _action_head(index)
            batch.actions.append((message, indexed, b"%s%s}}\n%s\n" % (head, orjson.dumps(doc[indexed.id_field]), orjson.dumps(doc))))
        return batch

    try:
        while True:
            if time.monotonic() - last_retention >= retention_every_s:
                last_retention = time.monotonic()
                _retry(lambda: apply_retention(es, es_settings, types), "apply retention", report, keep_alive=keep_alive)
            messages = held[:] + consumer.consume(es_settings.bulk_actions, timeout=0.01 if window else 0.5)
            held.clear()
            if messages:
                idle_since = time.monotonic()
                batch = build(messages)
                batch.submitted = _submit(es, es_settings, batch.actions, pool)
                window.append(batch)
            # Finish in order: whatever is done, the oldest once the window is full, everything when input pauses.
            while window and (not messages or len(window) > es_settings.bulk_concurrency or window[0].done()):
                finish(window.popleft())
            if messages:
                continue
            idle_from = max(idle_since, assigned[-1]) if assigned else None
            if stop_when_idle_s is not None and idle_from is not None and time.monotonic() - idle_from > stop_when_idle_s:
                break
    except KeyboardInterrupt:
        log.info("interrupted, stopping summary=%r", report.summary())
    finally:
        try:
            while window:
                finish(window.popleft())
            if committed:
                try:
                    consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in committed.items()], asynchronous=False)
                except KafkaException as exc:
                    log.warning("offsets not committed (partitions moved to another sink; re-indexing is idempotent) error=%s", exc)
        finally:
            pool.shutdown(wait=True)
            consumer.close()
            report.dead_lettered.update(dead_letters.counts)
    return report


_ACTION_HEAD: dict[str, bytes] = {}  # index -> the action line up to its _id


def _action_head(index: str) -> bytes:
    head = _ACTION_HEAD[index] = b'{"index":{"_index":%s,"_id":' % orjson.dumps(index)
    return head


def _submit(es: Elasticsearch, settings: ElasticsearchSettings, actions: list[Action], pool: ThreadPoolExecutor) -> list[tuple[list[Action], Any]]:
    """Bulk requests of bulk_actions documents, run by the pool (bulk_concurrency of them in flight)."""
    chunks = [actions[i:i + settings.bulk_actions] for i in range(0, len(actions), settings.bulk_actions)]
    return [(chunk, pool.submit(_bulk, es, chunk)) for chunk in chunks]


def _finish_batch(es: Elasticsearch, settings: ElasticsearchSettings, batch: _Batch, pool: ThreadPoolExecutor,
                  dead_letters: DeadLetters, report: SinkReport, keep_alive: Any) -> None:
    """Wait for the batch's bulk requests; a document Elasticsearch rejects goes to the dead-letter topic with its
    error, one it could not take now (429, 5xx, or Elasticsearch unreachable) is sent again until it lands."""
    submitted = batch.submitted
    backoff = 0.5
    while submitted:
        retry: list[Action] = []
        down: Exception | None = None
        for chunk, future in submitted:
            try:
                response = future.result()
            except (EsConnectionError, ApiError) as exc:
                if isinstance(exc, ApiError) and _status(exc) is not None and _status(exc) < 500 and _status(exc) != 429:
                    raise
                down = exc
                retry += chunk
                continue
            if not response["errors"]:
                report.indexed.update(action[1].topic.name for action in chunk)
                continue
            for action, item in zip(chunk, response["items"]):
                result = item["index"]
                if not result.get("error"):
                    report.indexed[action[1].topic.name] += 1
                elif result["status"] == 429 or result["status"] >= 500:
                    retry.append(action)
                else:
                    error = result["error"]
                    dead_letters.send(action[0], "REJECTED_BY_SINK", f"{error.get('type')}: {error.get('reason')}")
        submitted = []
        if retry:
            batch.retried = True
            report.retries += 1
            what = f"elasticsearch unavailable ({type(down).__name__})" if down else f"{len(retry)} documents refused for now (429/5xx)"
            log.warning("%s, retrying in_s=%.1f documents=%d", what, backoff, len(retry))
            _sleep_alive(backoff * random.uniform(0.5, 1.5), keep_alive)
            backoff = min(backoff * 2, 30.0)
            submitted = _submit(es, settings, retry, pool)


def _bulk(es: Elasticsearch, chunk: list[Action]) -> Any:
    """One bulk request, its body joined from the actions' pre-serialized lines (the client's NDJSON serializer
    would encode each document again with the standard library's json, 3-4x orjson's time)."""
    return es.bulk(operations=b"".join(action[2] for action in chunk), filter_path="errors,items.*.status,items.*.error")


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status_code", None) or getattr(getattr(exc, "meta", None), "status", None)


def _sleep_alive(seconds: float, keep_alive: Any) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if keep_alive is not None:
            keep_alive()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.2))


def _retry(call: Any, what: str, report: SinkReport, keep_alive: Any, max_backoff_s: float = 30.0) -> Any:
    """Retry while Elasticsearch is unreachable or overloaded, with exponential backoff and jitter."""
    backoff = 0.5
    while True:
        try:
            return call()
        except (EsConnectionError, ApiError) as exc:
            status = _status(exc)
            if isinstance(exc, ApiError) and status is not None and status < 500 and status != 429:
                raise
            report.retries += 1
            log.warning("elasticsearch unavailable, retrying action=%s in_s=%.1f error=%s", what, backoff, type(exc).__name__)
            _sleep_alive(backoff * random.uniform(0.5, 1.5), keep_alive)
            backoff = min(backoff * 2, max_backoff_s)


def _next_offsets(messages: list[Any]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for message in messages:
        if not message.error():
            last[(message.topic(), message.partition())] = message.offset()
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in last.items()]
