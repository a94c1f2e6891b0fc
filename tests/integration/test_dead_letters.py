"""Garbage on a topic becomes a dead-letter record with the reason; the good records around it are indexed."""

import struct
import time

from producers.sample import sample_spans
from schemas.catalog import DEAD_LETTER, SPANS
from schemas.producer import AvroProducer
from schemas.serde import AvroDeserializer
from sinks.elasticsearch import es_client, index_name, run_sink

from tests.kafka_helpers import read_topic

# An hour ago: records carry their event time as the Kafka timestamp, and a topic's retention deletes
# what is older than it, so test data must be recent.
RECENT = time.time_ns() - 3600 * 1_000_000_000


def test_undecodable_records_are_dead_lettered_and_the_rest_indexed(own_topics, registry):
    settings = own_topics
    producer = AvroProducer(settings, registry)
    good = list(sample_spans(20, start_ns=RECENT, seed=21))
    valid = producer.serializer(SPANS)(good[0])
    garbage = {
        "bad-magic": b"\x7fELF not avro",
        "truncated-header": b"\x00\x00",
        "unknown-id": struct.pack(">bI", 0, 987_654_321) + valid[5:],
        "cut-body": valid[:-12],
    }
    for i, span in enumerate(good):
        producer.produce(SPANS, span["flow_id"], span)
        if i % 5 == 0 and garbage:
            key, value = garbage.popitem()
            producer.produce_encoded(SPANS, key, value)
    producer.flush()

    report = run_sink(settings, topics=[SPANS.name], group_id="it-sink", stop_when_idle_s=3.0)

    assert report.indexed[SPANS.name] == 20
    assert sum(report.dead_lettered.values()) == 4
    es = es_client(settings.elasticsearch)
    index = index_name(settings.elasticsearch, SPANS)
    es.indices.refresh(index=index)
    assert es.count(index=index)["count"] == 20
    [hit] = es.search(index=index, query={"ids": {"values": [good[3]["span_id"]]}})["hits"]["hits"]  # in its day's index
    assert hit["_source"]["server_workload"] == good[3]["server_workload"]

    letters = read_topic(settings, DEAD_LETTER.full_name(settings.topics.prefix), 4)
    decode = AvroDeserializer(registry)
    records = {decode(m.value())["key"].decode(): decode(m.value()) for m in letters}
    assert {k: r["reason"] for k, r in records.items()} == {
        "bad-magic": "BAD_MAGIC_BYTE", "truncated-header": "TRUNCATED",
        "unknown-id": "UNKNOWN_SCHEMA_ID", "cut-body": records["cut-body"]["reason"],
    }
    assert records["cut-body"]["reason"] in ("TRUNCATED", "UNDECODABLE_PAYLOAD")
    assert records["bad-magic"]["value"] == b"\x7fELF not avro"
    assert records["bad-magic"]["source_topic"] == SPANS.full_name(settings.topics.prefix)
    assert records["bad-magic"]["component"] == "sink.elasticsearch"


def test_a_rerun_of_the_sink_neither_duplicates_nor_loses(own_topics):
    """Offsets were committed after indexing; replaying from the start (new group) overwrites by id."""
    settings = own_topics
    index = index_name(settings.elasticsearch, SPANS)
    es = es_client(settings.elasticsearch)
    es.indices.refresh(index=index)
    before = es.count(index=index)["count"]
    run_sink(settings, topics=[SPANS.name], group_id="it-sink", stop_when_idle_s=2.0)  # same group: nothing new
    replay = run_sink(settings, topics=[SPANS.name], group_id="it-sink-replay", stop_when_idle_s=2.0)
    es.indices.refresh(index=index)
    assert replay.indexed[SPANS.name] >= before
    assert es.count(index=index)["count"] == before
