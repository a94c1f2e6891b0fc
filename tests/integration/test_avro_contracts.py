"""Avro in the Confluent wire format through the real broker and the real registry (Apicurio ccompat)."""

import io
import json
import struct
import time
import urllib.request
import uuid

import fastavro
import pytest

from producers.sample import sample_spans
from schemas.catalog import CATALOG, SPANS
from schemas.producer import AvroProducer
from schemas.registry import BACKWARD, IncompatibleSchema
from schemas.serde import AvroDeserializer, AvroSerializer

from tests.kafka_helpers import read_topic

# An hour ago: records carry their event time as the Kafka timestamp, and a topic's retention deletes
# what is older than it, so test data must be recent.
RECENT = time.time_ns() - 3600 * 1_000_000_000


def test_produced_spans_come_back_equal_through_broker_and_registry(settings, registry, topics):
    spans = list(sample_spans(50, start_ns=RECENT, seed=11))
    producer = AvroProducer(settings, registry)
    for span in spans:
        producer.produce(SPANS, span["flow_id"], span)
    producer.flush()
    assert producer.delivered[SPANS.full_name(settings.topics.prefix)] == 50

    messages = read_topic(settings, SPANS.full_name(settings.topics.prefix), 50)
    decode = AvroDeserializer(registry)
    by_id = {record["span_id"]: record for record in (decode(m.value()) for m in messages)}
    assert len(by_id) == 50
    for span in spans:
        got = by_id[span["span_id"]]
        assert {k: got[k] for k in span} == span
    assert {m.key().decode() for m in messages} == {s["flow_id"] for s in spans}


def test_any_confluent_reader_can_decode_the_bytes(settings, registry, topics):
    """Decode with nothing of ours: the schema id from the header, the schema from the registry's REST API."""
    span = next(sample_spans(1, start_ns=RECENT, seed=12))
    data = AvroSerializer(registry, SPANS.value_subject(settings.topics.prefix), SPANS.schema())(span)
    magic, schema_id = struct.unpack(">bI", data[:5])
    assert magic == 0
    with urllib.request.urlopen(f"{settings.registry.url}/schemas/ids/{schema_id}") as response:
        schema = json.loads(json.loads(response.read())["schema"])
    record = fastavro.schemaless_reader(io.BytesIO(data[5:]), fastavro.parse_schema(schema))
    assert record["span_id"] == span["span_id"] and record["duration_ns"] == span["duration_ns"]


def test_every_topic_subject_is_registered_with_backward_compatibility(settings, registry, topics):
    subjects = set(registry.subjects())
    for spec in CATALOG:
        assert spec.value_subject(settings.topics.prefix) in subjects
        assert registry.compatibility(spec.value_subject(settings.topics.prefix)) == BACKWARD


V1 = {"type": "record", "name": "Probe", "namespace": "io.tracetap.test", "doc": "d",
      "fields": [{"name": "id", "type": "string", "doc": "d"}, {"name": "latency_ns", "type": "long", "doc": "d"}]}


@pytest.fixture
def probe_subject(registry):
    subject = f"probe-{uuid.uuid4().hex[:8]}-value"
    registry.register(subject, V1)
    registry.set_compatibility(subject, BACKWARD)
    return subject


def test_an_old_reader_reads_records_of_a_compatible_evolution(registry, probe_subject):
    v2 = json.loads(json.dumps(V1))
    v2["fields"].append({"name": "region", "type": ["null", "string"], "default": None, "doc": "new, optional"})
    data = AvroSerializer(registry, probe_subject, v2)({"id": "r1", "latency_ns": 42, "region": "eu-1"})
    old_reader = AvroDeserializer(registry, reader_schema=V1)
    assert old_reader(data) == {"id": "r1", "latency_ns": 42}
    # And a new reader reads old records, filling the default.
    old_data = AvroSerializer(registry, probe_subject, V1)({"id": "r0", "latency_ns": 7})
    assert AvroDeserializer(registry, reader_schema=v2)(old_data) == {"id": "r0", "latency_ns": 7, "region": None}


@pytest.mark.parametrize("change", ["new required field", "type change"])
def test_the_registry_refuses_an_incompatible_change(registry, probe_subject, change):
    bad = json.loads(json.dumps(V1))
    if change == "new required field":
        bad["fields"].append({"name": "region", "type": "string", "doc": "required, no default"})
    else:
        bad["fields"][1]["type"] = "string"
    with pytest.raises(IncompatibleSchema, match="(?i)incompatible"):
        registry.register(probe_subject, bad)
