"""Kafka's response walk to the first error code (classic and flexible versions, heads cut short), Produce and Fetch
topics, trace headers from record batches, and detection's false positives, on bytes built here by hand (record
batches by aiokafka's builder, an implementation of its own)."""

import random
import struct
import time
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.parser_seeds import SEEDS
from tracetap.protocols.base import ErrorClass
from tracetap.protocols.kafka import _RESPONSE_HEAD_BYTES, APIS, FLEXIBLE_FROM, KAFKA

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TOPIC_ID = uuid.UUID("5c3bb9b4-2f47-4d4a-9d0f-0d7a2e2c6e11")


def _s(text):  # classic string
    return struct.pack(">h", len(text)) + text.encode()


def _cs(text):  # compact string
    return bytes([len(text) + 1]) + text.encode()


def _request(api, version, body, flexible=False, correlation=5):
    header = struct.pack(">hhi", api, version, correlation) + _s("c") + (b"\x00" if flexible else b"")
    return struct.pack(">i", len(header) + len(body)) + header + body


def _response(body, flexible=False, correlation=5):
    header = struct.pack(">i", correlation) + (b"\x00" if flexible else b"")
    return struct.pack(">i", len(header) + len(body)) + header + body


def _finish(api, version, response_body, flexible=False, cut=None):
    request = KAFKA.parse_request(_request(api, version, b"", flexible), True).message
    data = _response(response_body, flexible)
    response = KAFKA.parse_response(data[:cut] if cut else data, cut is not None).message
    return KAFKA.finish(request, response)


def _error(message):
    attrs = dict(message.attributes)
    return (message.response_code, message.response_message, message.error_class, attrs.get("kafka.error_topic"),
            attrs.get("kafka.error_partition"), attrs.get("kafka.error_count"))


def _produce_v8_partition(index, code):
    return struct.pack(">ihqqq", index, code, 0, -1, 0) + struct.pack(">i", 0) + struct.pack(">h", -1)


def test_produce_v8_reads_the_failing_partition_after_a_good_one():
    body = struct.pack(">i", 1) + _s("orders") + struct.pack(">i", 2) + _produce_v8_partition(0, 0) + _produce_v8_partition(1, 10)
    assert _error(_finish(0, 8, body + struct.pack(">i", 0))) == (10, "MESSAGE_TOO_LARGE", ErrorClass.CLIENT_ERROR, "orders", "1", "1")


def test_produce_v9_flexible_reads_compact_arrays_and_tagged_fields():
    partition = struct.pack(">ihqqq", 0, 18, -1, -1, -1) + b"\x01" + b"\x00" + b"\x02\x00\x01x"  # no record errors, null message, a tag
    body = b"\x02" + _cs("orders") + b"\x02" + partition + b"\x00" + struct.pack(">i", 0) + b"\x00"
    assert _error(_finish(0, 9, body, flexible=True)) == (18, "RECORD_LIST_TOO_LARGE", ErrorClass.CLIENT_ERROR, "orders", "0", "1")


def test_a_produce_response_without_errors_reads_code_zero():
    body = struct.pack(">i", 1) + _s("orders") + struct.pack(">i", 1) + _produce_v8_partition(0, 0) + struct.pack(">i", 0)
    finished = _finish(0, 8, body)
    assert (finished.response_code, finished.error_class, finished.head) == (0, None, b"")


def _fetch_partition_v11(index, code, records):
    return (struct.pack(">ihqqq", index, code, 10, 10, 0) + struct.pack(">i", -1) + struct.pack(">i", -1)
            + struct.pack(">i", len(records)) + records)


def test_fetch_v11_skips_record_batches_by_their_length_to_a_later_partitions_error():
    records = b"\x01" * 300  # not a record batch: never read
    body = (struct.pack(">ihi", 0, 0, 7) + struct.pack(">i", 1) + _s("orders") + struct.pack(">i", 2)
            + _fetch_partition_v11(0, 0, records) + _fetch_partition_v11(1, 1, b""))
    assert _error(_finish(1, 11, body)) == (1, "OFFSET_OUT_OF_RANGE", ErrorClass.CLIENT_ERROR, "orders", "1", "1")


def test_fetch_top_level_error_comes_before_its_partitions():
    body = struct.pack(">ihi", 0, 70, 0) + struct.pack(">i", 0)
    assert _error(_finish(1, 7, body)) == (70, "FETCH_SESSION_ID_NOT_FOUND", ErrorClass.SERVER_ERROR, None, None, "1")


def test_fetch_v13_names_the_failing_topic_by_its_id():
    partition = struct.pack(">ihqqq", 3, 100, -1, -1, -1) + b"\x01" + struct.pack(">i", -1) + b"\x00" + b"\x00"
    body = struct.pack(">ihi", 0, 0, 0) + b"\x02" + TOPIC_ID.bytes + b"\x02" + partition + b"\x00" + b"\x00"
    assert _error(_finish(1, 13, body, flexible=True)) == (100, "UNKNOWN_TOPIC_ID", ErrorClass.CLIENT_ERROR, str(TOPIC_ID), "3", "1")


def test_a_walk_cut_before_any_error_is_unknown_and_one_cut_after_reports_it():
    big = b"\x01" * (_RESPONSE_HEAD_BYTES + 100)
    late = (struct.pack(">ihi", 0, 0, 7) + struct.pack(">i", 1) + _s("orders") + struct.pack(">i", 2)
            + _fetch_partition_v11(0, 0, big) + _fetch_partition_v11(1, 6, b""))
    assert _finish(1, 11, late).response_code is None  # the error lies past the head kept: unknown, not success
    early = (struct.pack(">ihi", 0, 0, 7) + struct.pack(">i", 1) + _s("orders") + struct.pack(">i", 2)
             + _fetch_partition_v11(0, 6, big) + _fetch_partition_v11(1, 0, b""))
    assert _error(_finish(1, 11, early))[:2] == (6, "NOT_LEADER_OR_FOLLOWER")
    cut = _finish(1, 11, early, cut=30)  # the capture kept 30 bytes: the partition's code is beyond them
    assert cut.response_code is None


def test_metadata_v12_reads_a_topics_error_after_the_brokers():
    broker = struct.pack(">i", 1) + _cs("127.0.0.1") + struct.pack(">i", 9092) + b"\x00" + b"\x00"  # null rack
    topic = struct.pack(">h", 3) + _cs("missing") + bytes(16) + b"\x00" + b"\x01" + struct.pack(">i", -1) + b"\x00"
    body = struct.pack(">i", 0) + b"\x02" + broker + _cs("cluster") + struct.pack(">i", 1) + b"\x02" + topic + b"\x00"
    assert _error(_finish(3, 12, body, flexible=True)) == (3, "UNKNOWN_TOPIC_OR_PARTITION", ErrorClass.CLIENT_ERROR, "missing", None, "1")


def test_metadata_v13_reads_its_top_level_code_after_the_topics():
    body = struct.pack(">i", 0) + b"\x01" + b"\x00" + struct.pack(">i", 1) + b"\x01" + struct.pack(">h", 56) + b"\x00"
    assert _error(_finish(3, 13, body, flexible=True))[:3] == (56, "KAFKA_STORAGE_ERROR", ErrorClass.SERVER_ERROR)


def test_metadata_v1_reads_a_partitions_error():
    partition = struct.pack(">hiii", 5, 2, -1, 0) + struct.pack(">i", 0)
    topic = struct.pack(">h", 0) + _s("orders") + b"\x00" + struct.pack(">i", 1) + partition
    body = struct.pack(">i", 0) + struct.pack(">i", -1) + struct.pack(">i", 1) + topic
    assert _error(_finish(3, 1, body)) == (5, "LEADER_NOT_AVAILABLE", ErrorClass.SERVER_ERROR, "orders", "2", "1")


def test_offset_fetch_reads_the_partition_then_the_top_level_code():
    partition = struct.pack(">iq", 0, -1) + _s("") + struct.pack(">h", 0)
    body = struct.pack(">i", 0) + struct.pack(">i", 1) + _s("orders") + struct.pack(">i", 1) + partition + struct.pack(">h", 16)
    assert _error(_finish(9, 3, body))[:3] == (16, "NOT_COORDINATOR", ErrorClass.SERVER_ERROR)


def test_offset_fetch_v8_reads_each_groups_code():
    group = _cs("g") + b"\x01" + struct.pack(">h", 30) + b"\x00"
    body = struct.pack(">i", 0) + b"\x02" + group + b"\x00"
    assert _error(_finish(9, 8, body, flexible=True))[:3] == (30, "GROUP_AUTHORIZATION_FAILED", ErrorClass.CLIENT_ERROR)


def test_create_and_delete_topics_name_the_topic_that_failed():
    created = (struct.pack(">i", 0) + b"\x02" + _cs("orders") + struct.pack(">h", 36) + _cs("exists") + struct.pack(">ih", -1, -1)
               + b"\x01\x00\x00")  # no configs, topic and response tags
    assert _error(_finish(19, 5, created, flexible=True)) == (36, "TOPIC_ALREADY_EXISTS", ErrorClass.CLIENT_ERROR, "orders", None, "1")
    deleted = struct.pack(">i", 0) + b"\x02" + b"\x00" + TOPIC_ID.bytes + struct.pack(">h", 100) + b"\x00" + b"\x00" + b"\x00"
    assert _error(_finish(20, 6, deleted, flexible=True))[:4] == (100, "UNKNOWN_TOPIC_ID", ErrorClass.CLIENT_ERROR, str(TOPIC_ID))


def test_top_level_codes_of_group_apis_and_api_versions():
    assert _error(_finish(12, 4, struct.pack(">ih", 0, 27) + b"\x00", flexible=True))[:2] == (27, "REBALANCE_IN_PROGRESS")
    assert _error(_finish(18, 3, struct.pack(">h", 35) + b"\x00"))[:2] == (35, "UNSUPPORTED_VERSION")  # response header v0


def _batch(compression=0, headers=(("traceparent", TRACEPARENT.encode()), ("X-Request-Id", b"r-1"), ("other", b"x"))):
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=compression, is_transactional=0, producer_id=-1, producer_epoch=-1,
                                        base_sequence=-1, batch_size=1 << 20)
    builder.append(0, timestamp=None, key=b"k", value=b"v" * 200, headers=list(headers))
    builder.append(1, timestamp=None, key=b"k", value=b"w", headers=[("traceparent", b"second")])
    return bytes(builder.build())


def _produce(version, batch, topics=("orders",)):
    flexible = version >= 9
    if flexible:
        parts = b"".join(_cs(t) + b"\x02" + struct.pack(">i", 0) + _uvarint(len(batch) + 1) + batch + b"\x00" + b"\x00" for t in topics)
        body = b"\x00" + struct.pack(">hi", -1, 5000) + bytes([len(topics) + 1]) + parts + b"\x00"
    else:
        parts = b"".join(_s(t) + struct.pack(">ii", 1, 0) + struct.pack(">i", len(batch)) + batch for t in topics)
        body = struct.pack(">hhi", -1, -1, 5000) + struct.pack(">i", len(topics)) + parts
    return _request(0, version, body, flexible)


def _uvarint(n):
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def test_produce_trace_headers_come_from_the_first_records_headers_in_both_formats():
    expected = (("traceparent", TRACEPARENT), ("x-request-id", "r-1"))
    for version in (7, 9):
        message = KAFKA.parse_request(_produce(version, _batch()), False).message
        assert (message.request_resource, message.trace_headers) == ("orders", expected)


def test_gzip_batches_are_inflated_and_other_codecs_are_not_read():
    assert KAFKA.parse_request(_produce(7, _batch(compression=1)), False).message.trace_headers[0] == ("traceparent", TRACEPARENT)
    lz4 = bytearray(_batch())
    lz4[22] |= 3  # attributes' codec bits: lz4 (the records are not actually compressed: never read)
    assert KAFKA.parse_request(_produce(7, bytes(lz4)), False).message.trace_headers == ()


def test_a_record_without_trace_headers_gives_none_and_a_cut_batch_gives_what_it_holds():
    assert KAFKA.parse_request(_produce(7, _batch(headers=())), False).message.trace_headers == (("traceparent", "second"),)
    request = _produce(7, _batch())
    cut = KAFKA.parse_request(request[:request.index(b"other")], True).message  # the capture ends in the first record's headers
    assert cut.trace_headers == (("traceparent", TRACEPARENT), ("x-request-id", "r-1"))


def test_a_produce_request_naming_several_topics_reports_the_first_and_the_count():
    message = KAFKA.parse_request(_produce(7, _batch(), topics=("orders", "payments")), False).message
    assert message.request_resource == "orders" and ("kafka.topic_count", "2") in message.attributes


def test_fetch_requests_name_their_first_topic_or_its_id():
    v11 = (struct.pack(">iiiibii", -1, 500, 1, 1 << 20, 0, 0, -1) + struct.pack(">i", 2) + _s("orders") + struct.pack(">i", 0)
           + _s("b") + struct.pack(">i", 0) + struct.pack(">i", 0) + _s(""))  # two topics, nothing forgotten, no rack
    message = KAFKA.parse_request(_request(1, 11, v11), False).message
    assert message.request_resource == "orders" and ("kafka.topic_count", "2") in message.attributes
    v13 = struct.pack(">iiiibii", -1, 500, 1, 1 << 20, 0, 0, -1) + b"\x02" + TOPIC_ID.bytes + b"\x01\x00" + b"\x01\x01\x00"
    assert KAFKA.parse_request(_request(1, 13, v13, flexible=True), False).message.request_resource == str(TOPIC_ID)


def test_detection_takes_real_requests_and_whole_runs_of_them():
    requests = [data for conversation in SEEDS["KAFKA"] for is_request, data in conversation if is_request]
    assert all(KAFKA.detect(r, 40000) for r in requests)
    assert KAFKA.detect(b"".join(requests), 40000)
    assert KAFKA.detect(_produce(9, _batch()), 40000) and KAFKA.detect(_produce(9, _batch())[:30], 40000)


def test_detection_refuses_unknown_apis_versions_sizes_and_client_ids():
    request = _produce(7, _batch())
    assert not KAFKA.detect(request[:4] + struct.pack(">h", 50) + request[6:], 40000)  # an API not named
    assert not KAFKA.detect(request[:6] + struct.pack(">h", 14) + request[8:], 40000)  # Produce has no v14
    assert not KAFKA.detect(request[:6] + struct.pack(">h", 1) + request[8:], 40000)  # nor v1 any more (Kafka 4)
    assert not KAFKA.detect(struct.pack(">i", len(request) - 10) + request[4:], 40000)  # a size shorter than the chunk
    assert not KAFKA.detect(request + b"\xff" * 20, 40000)  # a second request whose header does not hold
    assert KAFKA.detect(request + request[:20], 40000)  # one that goes on past the chunk
    assert not KAFKA.detect(request[:14] + b"\x01" + request[15:], 40000)  # a client id with a control byte
    assert not KAFKA.detect(request[:17] + struct.pack(">h", 7) + request[19:], 40000)  # acks 7


def test_random_bytes_and_other_protocols_messages_are_not_taken_for_kafka():
    rng = random.Random(18)
    assert sum(KAFKA.detect(rng.randbytes(64), 40000) for _ in range(20_000)) == 0
    assert sum(KAFKA.detect(rng.randbytes(rng.randint(14, 4096)), 40000) for _ in range(2_000)) == 0
    for name, conversations in SEEDS.items():
        if name != "KAFKA":
            assert not [data for c in conversations for _, data in c if KAFKA.detect(data, 9092)], name


@given(api=st.sampled_from(sorted(APIS)), version=st.integers(0, 20), body=st.binary(max_size=600))
@settings(max_examples=400, deadline=None)
def test_the_walk_never_raises_on_any_bytes_of_any_api_and_version(api, version, body):
    flexible = version >= FLEXIBLE_FROM[api]
    request = KAFKA.parse_request(_request(api, version, body, flexible), True).message
    for head in (body, b"\x00" + body, b"\xff" * 8 + body):
        finished = KAFKA.finish(request, KAFKA.parse_response(_response(head), True).message)
        assert finished.response_code is None or isinstance(finished.response_code, int)


def test_the_walk_is_linear_on_the_largest_head():
    request = KAFKA.parse_request(_request(3, 1, b""), True).message
    huge_arrays = struct.pack(">i", 0x7FFFFFFF) + b"\x00" * (_RESPONSE_HEAD_BYTES - 4)  # an endless broker list of empty fields
    response = KAFKA.parse_response(_response(huge_arrays), True).message
    started = time.perf_counter()
    assert KAFKA.finish(request, response).response_code is None
    assert time.perf_counter() - started < 0.05
