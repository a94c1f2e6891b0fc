"""Kafka through a recording relay, with librdkafka (confluent-kafka) and aiokafka against the stack's broker:
trace headers from produced records, topics of Produce and Fetch, and error codes read per partition and per
topic (a record over the topic's max.message.bytes, an unknown topic, an offset out of range). Expected values
are what the test did: the topics it created, the headers it sent, the offsets it asked for."""

import asyncio
import socket
import struct
import time
import uuid

import pytest

from tests.integration.test_sql_kafka_parsers import _assemble_per_connection
from tests.recording import BrokerRelay
from tracetap.protocols import detect
from tracetap.protocols.kafka import KAFKA

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SW8 = "1-YWJj-ZGVm-0-c2VydmljZQ==-aW5zdGFuY2U=-L3BhdGg=-MTI3LjAuMC4xOjkwOTI="


@pytest.fixture(scope="module")
def broker(stack, settings):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    port = int(settings.kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
    run = uuid.uuid4().hex[:8]
    topics = {"traced": f"kt-traced-{run}", "small": f"kt-small-{run}", "aio": f"kt-aio-{run}"}
    new = [NewTopic(topics["traced"], 1, 1), NewTopic(topics["aio"], 1, 1),
           NewTopic(topics["small"], 1, 1, config={"max.message.bytes": "1024"})]
    for future in admin.create_topics(new, operation_timeout=30).values():
        future.result()
    warm_up = Producer({"bootstrap.servers": f"127.0.0.1:{port}"})  # a new partition's leader may still refuse (NOT_LEADER_OR_FOLLOWER)
    for topic in topics.values():
        warm_up.produce(topic, b"warm-up")
    assert warm_up.flush(30) == 0
    yield port, topics, admin
    for future in admin.delete_topics(list(topics.values()), operation_timeout=30).values():
        future.result()


def _recorded(relay):
    time.sleep(0.3)
    relay.close()
    assert relay.advertised in relay.stream("s2c"), "the broker did not advertise itself where the relay expects"
    spans = _assemble_per_connection(relay, 9092)
    answered = [s for s in spans if s.response_message != "connection closed before the response"]  # e.g. a fetch cut by close
    assert [s.request_type for s in answered if s.response_code is None] == []  # every response walked to a code, none unknown
    return spans


def _topic_id(admin, topic):
    from confluent_kafka import TopicCollection

    description = admin.describe_topics(TopicCollection([topic]))[topic].result()
    mask = (1 << 64) - 1
    msb, lsb = description.topic_id.get_most_significant_bits(), description.topic_id.get_least_significant_bits()
    return str(uuid.UUID(int=((msb & mask) << 64) | (lsb & mask)))


def test_librdkafka_produce_spans_carry_the_record_headers_trace_context_and_the_topic(broker):
    from confluent_kafka import Producer

    port, topics, _ = broker
    relay = BrokerRelay(port)
    for codec, request_id in (("none", "plain-1"), ("gzip", "gzip-1")):  # a gzip batch is inflated to read its headers
        producer = Producer({"bootstrap.servers": f"127.0.0.1:{relay.port}", "client.id": "kt-producer", "compression.type": codec,
                             "linger.ms": 0})
        producer.produce(topics["traced"], b"order 42", key=b"k",
                         headers=[("traceparent", TRACEPARENT), ("SW8", SW8), ("x-request-id", request_id), ("other", b"x")])
        assert producer.flush(15) == 0
    spans = _recorded(relay)
    produce = [s for s in spans if s.request_type == "Produce"]
    assert [(s.request_resource, s.trace_headers, s.response_code, s.error_class) for s in produce] == [
        (topics["traced"], {"traceparent": TRACEPARENT, "sw8": SW8, "x-request-id": request_id}, 0, None)
        for request_id in ("plain-1", "gzip-1")]


def test_a_record_over_the_topics_limit_reads_message_too_large_for_its_partition(broker):
    from confluent_kafka import Producer

    port, topics, _ = broker
    relay = BrokerRelay(port)
    failures = []
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{relay.port}", "client.id": "kt-producer", "linger.ms": 0, "retries": 0})
    producer.produce(topics["small"], b"x" * 4000, on_delivery=lambda err, msg: failures.append(err))
    producer.flush(15)
    assert failures and failures[0] is not None  # the broker refused it
    spans = _recorded(relay)
    produce = [s for s in spans if s.request_type == "Produce"]
    assert produce and all(s.request_resource == topics["small"] for s in produce)
    assert {(s.response_code, s.response_message, s.error_class) for s in produce} == {(10, "MESSAGE_TOO_LARGE", "CLIENT_ERROR")}
    assert {(s.attributes["kafka.error_topic"], s.attributes["kafka.error_partition"]) for s in produce} == {(topics["small"], "0")}


def test_an_unknown_topic_reads_unknown_topic_or_partition_in_metadata_and_produce(broker):
    """The broker does not create topics (auto.create.topics.enable=false): librdkafka's Metadata request for the
    topic, and a Produce v7 request built here with aiokafka's record batch builder, both name an unknown one."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    port, _, _ = broker
    missing = f"kt-missing-{uuid.uuid4().hex[:8]}"
    relay = BrokerRelay(port)
    from confluent_kafka.admin import AdminClient

    AdminClient({"bootstrap.servers": f"127.0.0.1:{relay.port}", "client.id": "kt-admin"}).list_topics(topic=missing, timeout=10)
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1, producer_epoch=-1,
                                        base_sequence=-1, batch_size=1 << 20)
    builder.append(0, timestamp=None, key=None, value=b"v", headers=[("traceparent", TRACEPARENT.encode())])
    batch = bytes(builder.build())
    body = (struct.pack(">hhih", 0, 7, 777, 7) + b"kt-test" + struct.pack(">hhi", -1, 1, 5000) + struct.pack(">ih", 1, len(missing))
            + missing.encode() + struct.pack(">iii", 1, 0, len(batch)) + batch)
    with socket.create_connection(("127.0.0.1", relay.port)) as raw:
        raw.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", raw.recv(4))[0]
        while size > 0:
            size -= len(raw.recv(size))
    spans = _recorded(relay)
    metadata = [s for s in spans if s.request_type == "Metadata" and s.response_code]
    assert metadata and {(s.response_code, s.response_message, s.error_class, s.attributes["kafka.error_topic"]) for s in metadata} == {
        (3, "UNKNOWN_TOPIC_OR_PARTITION", "CLIENT_ERROR", missing)}
    produce = [s for s in spans if s.request_type == "Produce"]
    assert [(s.request_resource, s.trace_headers, s.response_code, s.error_class, s.attributes["kafka.error_partition"])
            for s in produce] == [(missing, {"traceparent": TRACEPARENT}, 3, "CLIENT_ERROR", "0")]


def test_librdkafka_fetches_name_the_topic_by_id_and_read_offset_out_of_range(broker):
    """librdkafka fetches with Fetch v13+ against this broker, which names topics by id: the span's resource is the id."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    port, topics, admin = broker
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{port}"})
    for i in range(3):
        producer.produce(topics["traced"], f"fetched {i}".encode())
    assert producer.flush(15) == 0
    relay = BrokerRelay(port)
    config = {"bootstrap.servers": f"127.0.0.1:{relay.port}", "group.id": f"kt-{uuid.uuid4().hex[:8]}", "client.id": "kt-consumer",
              "enable.auto.commit": False, "auto.offset.reset": "error"}
    consumer = Consumer(config)
    consumer.assign([TopicPartition(topics["traced"], 0, 0)])
    got = None
    deadline = time.monotonic() + 15
    while got is None and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        got = message if message is not None and message.error() is None else None
    assert got is not None
    consumer.assign([TopicPartition(topics["traced"], 0, 1000)])  # far past the end: the broker refuses
    errors = []
    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is not None:
            errors.append(message.error())
    consumer.close()
    assert errors
    topic_id = _topic_id(admin, topics["traced"])
    spans = _recorded(relay)
    fetch = [s for s in spans if s.request_type == "Fetch"]
    versions = {int(s.attributes["kafka.api_version"]) for s in fetch}
    assert min(versions) >= 13, versions
    assert {s.request_resource for s in fetch if s.request_resource} == {topic_id}
    assert any(s.response_code == 0 and s.error_class is None for s in fetch)
    refused = [s for s in fetch if s.response_code]
    assert refused and {(s.response_code, s.response_message, s.error_class, s.attributes["kafka.error_topic"],
                         s.attributes["kafka.error_partition"]) for s in refused} == {
        (1, "OFFSET_OUT_OF_RANGE", "CLIENT_ERROR", topic_id, "0")}


def test_aiokafka_produce_and_fetch_spans_name_the_topic_and_read_offset_out_of_range(broker):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.errors import OffsetOutOfRangeError

    port, topics, _ = broker
    relay = BrokerRelay(port)
    topic = topics["aio"]

    async def talk():
        producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{relay.port}", client_id="kt-aio")
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"order 7", headers=[("traceparent", TRACEPARENT.encode())])
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=f"127.0.0.1:{relay.port}", client_id="kt-aio", enable_auto_commit=False,
                                    auto_offset_reset="none")
        await consumer.start()
        try:
            partition = TopicPartition(topic, 0)
            consumer.assign([partition])
            consumer.seek(partition, 1)  # after the fixture's warm-up record
            fetched = await consumer.getmany(partition, timeout_ms=10_000)
            assert [m.value for m in fetched[partition]] == [b"order 7"]
            consumer.seek(partition, 1000)
            with pytest.raises(OffsetOutOfRangeError):
                for _ in range(20):
                    await consumer.getmany(partition, timeout_ms=500)
        finally:
            await consumer.stop()

    asyncio.run(talk())
    spans = _recorded(relay)
    produce = [s for s in spans if s.request_type == "Produce"]
    assert [(s.request_resource, s.trace_headers, s.response_code, s.error_class) for s in produce] == [
        (topic, {"traceparent": TRACEPARENT}, 0, None)]
    fetch = [s for s in spans if s.request_type == "Fetch"]
    assert {s.request_resource for s in fetch} == {topic}
    assert any(s.response_code == 0 for s in fetch)
    refused = [s for s in fetch if s.response_code]
    assert refused and {(s.response_code, s.error_class, s.attributes["kafka.error_topic"], s.attributes["kafka.error_partition"])
                        for s in refused} == {(1, "CLIENT_ERROR", topic, "0")}


def test_every_recorded_client_connection_is_detected_as_kafka_on_any_port(broker):
    from confluent_kafka import Producer

    port, topics, _ = broker
    relay = BrokerRelay(port)
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{relay.port}", "client.id": "kt-producer", "linger.ms": 0})
    producer.produce(topics["traced"], b"detected")
    assert producer.flush(15) == 0
    relay.close()
    for connection in relay.connections():
        first = [data for direction, data in connection if direction == "c2s"]
        assert first and detect("TCP", first[0], 40000) is KAFKA
        for chunk in first:  # mid-connection: every request the client wrote
            assert KAFKA.detect(chunk, 40000), chunk[:40]


def test_a_consumer_groups_requests_are_walked_to_the_end_of_each_response(broker):
    """Join, sync, offsets (list, commit, fetch), leave: every response is read through to a code (0 when it has no
    error, never unknown), which a walk that misreads a field of the version librdkafka chose would not do."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    port, topics, _ = broker
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{port}"})
    producer.produce(topics["traced"], b"for the group")
    assert producer.flush(15) == 0
    relay = BrokerRelay(port)
    consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{relay.port}", "group.id": f"kt-group-{uuid.uuid4().hex[:8]}",
                         "client.id": "kt-group", "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topics["traced"]])
    message = None
    deadline = time.monotonic() + 30
    while message is None and time.monotonic() < deadline:
        polled = consumer.poll(0.5)
        message = polled if polled is not None and polled.error() is None else None
    assert message is not None
    consumer.commit(message=message, asynchronous=False)
    assert consumer.committed([TopicPartition(topics["traced"], 0)], timeout=10)[0].offset == message.offset() + 1
    consumer.get_watermark_offsets(TopicPartition(topics["traced"], 0), timeout=10)
    consumer.close()
    spans = _recorded(relay)
    apis = {s.request_type for s in spans}
    assert {"FindCoordinator", "JoinGroup", "SyncGroup", "OffsetCommit", "OffsetFetch", "ListOffsets", "LeaveGroup", "Fetch",
            "Metadata", "ApiVersions"} <= apis, apis
    answered = [s for s in spans if s.response_message != "connection closed before the response"]
    offsets_and_sync = ("OffsetCommit", "OffsetFetch", "ListOffsets", "SyncGroup")
    assert {s.request_type: s.response_code for s in answered if s.request_type in offsets_and_sync} == dict.fromkeys(offsets_and_sync, 0)
    joins = [(s.response_code, s.response_message, s.error_class) for s in answered if s.request_type == "JoinGroup"]
    # KIP-394: the first join is sent back for an id, a step of joining and no error
    assert joins[0] == (79, "MEMBER_ID_REQUIRED", None) and joins[-1] == (0, None, None)


def test_an_aiokafka_consumer_groups_classic_versions_are_walked_to_a_code(broker):
    """aiokafka speaks the pre-flexible versions of the group and offset APIs: each response reads a code too."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    port, topics, _ = broker
    relay = BrokerRelay(port)
    topic = topics["aio"]

    async def talk():
        producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{port}")
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"for the aio group")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=f"127.0.0.1:{relay.port}", group_id=f"kt-aio-{uuid.uuid4().hex[:8]}",
                                    client_id="kt-aio-group", enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            message = await asyncio.wait_for(consumer.getone(), 30)
            partition = TopicPartition(topic, 0)
            await consumer.commit({partition: message.offset + 1})
            assert await consumer.committed(partition) == message.offset + 1
        finally:
            await consumer.stop()

    asyncio.run(talk())
    spans = _recorded(relay)
    codes = {s.request_type: s.response_code for s in spans if s.request_type in ("JoinGroup", "SyncGroup", "OffsetCommit", "OffsetFetch")}
    assert codes == {"JoinGroup": 0, "SyncGroup": 0, "OffsetCommit": 0, "OffsetFetch": 0}
