"""Kafka through the eBPF agent (in-collector, its default) on real traffic: a librdkafka producer in a process of
its own writes records with a traceparent header to the stack's broker, one request at a time, and one record larger
than its topic allows. Its Produce requests are counted at both ends, the producer (c-p) and the broker (s-p, which
reads each request's size prefix alone, then the rest), against what the producer did, exactly."""

import json
import subprocess
import sys
import uuid

import pytest

from schemas.catalog import NODE_SPANS
from schemas.serde import AvroDeserializer
from tests.e2e.test_ebpf_agent import running_agent
from tests.kafka_helpers import read_until_idle

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
PRODUCER = r"""
import json, os, sys
from confluent_kafka import Producer
bootstrap, traced, small, traceparent = sys.argv[1:]
producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "enable.idempotence": False, "retries": 0})
outcomes = []
def delivered(error, message):
    outcomes.append(None if error is None else error.name())
for i in range(3):
    producer.produce(traced, b"order-%d" % i, headers=[("traceparent", traceparent.encode())], on_delivery=delivered)
    producer.flush(20)
producer.produce(small, b"x" * 4000, on_delivery=delivered)
producer.flush(20)
print(json.dumps({"pid": os.getpid(), "outcomes": outcomes}))
"""


@pytest.fixture(scope="module")
def produced(own_topics, registry, admin):
    from confluent_kafka.admin import NewTopic

    settings = own_topics
    run = uuid.uuid4().hex[:8]
    traced, small = f"agent-kafka-traced-{run}", f"agent-kafka-small-{run}"
    for future in admin.create_topics([NewTopic(traced, 1, 1), NewTopic(small, 1, 1, config={"max.message.bytes": "1024"})],
                                      operation_timeout=30).values():
        future.result()
    try:
        # the broker is the pipeline's own, whose port the agent leaves out by default: here it is the service traced
        with running_agent(settings, extra_env={"TRACETAP_AGENT__EXCLUDE_PIPELINE_PORTS": "false"}):
            out = subprocess.run([sys.executable, "-c", PRODUCER, settings.kafka.bootstrap_servers, traced, small, TRACEPARENT],
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr[-2000:]
            producer = json.loads(out.stdout)
    finally:
        for future in admin.delete_topics([traced, small], operation_timeout=30).values():
            future.result()
    decode = AvroDeserializer(registry)
    records = [decode(m.value()) for m in read_until_idle(settings, NODE_SPANS.full_name(settings.topics.prefix))]
    return producer, traced, small, records


def test_each_produce_request_is_one_span_at_the_producer_and_one_at_the_broker(produced):
    producer, traced, small, records = produced
    assert producer["outcomes"] == [None, None, None, "MSG_SIZE_TOO_LARGE"]
    mine = [r for r in records if r["protocol"] == "KAFKA" and r["tap_side"] == "CLIENT_PROCESS" and r["pid"] == producer["pid"]]
    ports = {r["client_port"] for r in mine}
    broker = [r for r in records if r["protocol"] == "KAFKA" and r["tap_side"] == "SERVER_PROCESS" and r["client_port"] in ports]
    expected = [(traced, 0, None)] * 3 + [(small, 10, "CLIENT_ERROR")]  # MESSAGE_TOO_LARGE, for its partition
    for side in (mine, broker):
        produce = sorted((r for r in side if r["request_type"] == "Produce"), key=lambda r: r["start_time"])
        assert [(r["request_resource"], r["response_code"], r["error_class"]) for r in produce] == expected
        assert [r["traceparent"] for r in produce] == [TRACEPARENT] * 3 + [None]
        assert produce[-1]["attributes"]["kafka.error_topic"] == small
        assert {r["request_type"] for r in side} >= {"ApiVersions", "Metadata", "Produce"}
    # the broker's side of the same requests: each pairs with the producer's by correlation id and connection
    pairs = lambda side: sorted((r["client_port"], r["attributes"]["kafka.correlation_id"], r["request_type"]) for r in side)  # noqa: E731
    assert pairs(mine) == pairs(broker)
