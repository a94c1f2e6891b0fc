"""Confluent framing and Avro serde against an in-memory registry (pure logic; the real registry
is exercised in tests/integration)."""

import io
import struct

import fastavro
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from schemas.catalog import SPANS
from schemas.registry import UnknownSchemaId
from schemas.serde import AvroDeserializer, AvroSerializer, DecodeFailure, FlatRecordWriter, InvalidRecord, UndecodableRecord, avro_long


class InMemoryRegistry:
    def __init__(self):
        self.schemas = {}

    def register(self, subject, schema):
        for schema_id, known in self.schemas.items():
            if known == schema:
                return schema_id
        self.schemas[len(self.schemas) + 1] = schema
        return len(self.schemas)

    def schema_by_id(self, schema_id):
        try:
            return self.schemas[schema_id]
        except KeyError:
            raise UnknownSchemaId(str(schema_id)) from None


def span(**overrides):
    record = {
        "span_id": "a1", "protocol": "HTTP", "tap_side": "SERVER_PROCESS", "host": "node-1",
        "start_time": 1_764_000_000_123_456_789, "end_time": 1_764_000_003_123_456_789, "duration_ns": 3_000_000_000,
        "flow_id": "tcp|10.0.0.1|43210|10.0.0.2|80", "l4_protocol": "TCP",
        "client_ip": "10.0.0.1", "client_port": 43210, "server_ip": "10.0.0.2", "server_port": 80,
        "request_bytes": 120, "response_bytes": 512, "response_code": 502, "error_class": "SERVER_ERROR",
        "attributes": {"k": "v"},
    }
    record.update(overrides)
    return record


@pytest.fixture
def registry():
    return InMemoryRegistry()


def test_encoded_records_carry_the_confluent_header(registry):
    encode = AvroSerializer(registry, "t-value", SPANS.schema())
    data = encode(span())
    magic, schema_id = struct.unpack(">bI", data[:5])
    assert (magic, schema_id) == (0, encode.schema_id)
    # The body is plain Avro any reader can decode with the registered schema.
    body = fastavro.schemaless_reader(io.BytesIO(data[5:]), fastavro.parse_schema(SPANS.schema()))
    assert body["span_id"] == "a1" and body["response_code"] == 502


def test_round_trip_keeps_nanosecond_timestamps_as_integers(registry):
    data = AvroSerializer(registry, "t-value", SPANS.schema())(span())
    decoded = AvroDeserializer(registry)(data)
    assert decoded["start_time"] == 1_764_000_000_123_456_789
    assert decoded["error_class"] == "SERVER_ERROR"
    assert decoded["trace_id"] is None  # defaults filled in


def test_a_record_that_does_not_fit_its_schema_is_reported(registry):
    encode = AvroSerializer(registry, "t-value", SPANS.schema())
    with pytest.raises(InvalidRecord, match="t-value"):
        encode(span(client_port="not a port"))


@pytest.mark.parametrize(("data", "reason"), [
    (b"", DecodeFailure.TRUNCATED),
    (b"\x00\x00\x00", DecodeFailure.TRUNCATED),
    (None, DecodeFailure.TRUNCATED),
    (b"{\"json\": true}", DecodeFailure.BAD_MAGIC_BYTE),
    (b"\x00\x00\x00\x00\x63rest", DecodeFailure.UNKNOWN_SCHEMA_ID),
])
def test_framing_errors_have_a_reason(registry, data, reason):
    with pytest.raises(UndecodableRecord) as error:
        AvroDeserializer(registry)(data)
    assert error.value.reason is reason


def test_a_cut_off_body_is_truncated(registry):
    data = AvroSerializer(registry, "t-value", SPANS.schema())(span())
    with pytest.raises(UndecodableRecord) as error:
        AvroDeserializer(registry)(data[:-10])
    assert error.value.reason in (DecodeFailure.TRUNCATED, DecodeFailure.UNDECODABLE_PAYLOAD)


def test_trailing_bytes_after_a_record_are_not_ignored(registry):
    data = AvroSerializer(registry, "t-value", SPANS.schema())(span())
    with pytest.raises(UndecodableRecord) as error:
        AvroDeserializer(registry)(data + b"\x00junk")
    assert error.value.reason is DecodeFailure.UNDECODABLE_PAYLOAD


@settings(max_examples=400, deadline=None)
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes_after_a_valid_header_never_escape_as_another_error(body):
    registry = InMemoryRegistry()
    schema_id = registry.register("t-value", SPANS.schema())
    decode = AvroDeserializer(registry)
    try:
        decode(struct.pack(">bI", 0, schema_id) + body)
    except UndecodableRecord:
        pass


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_never_escape_as_another_error(data):
    try:
        AvroDeserializer(InMemoryRegistry())(data)
    except UndecodableRecord:
        pass



@given(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1))
@example(8191)  # 8191 and -8193 sit at the 2**14 table edge after zigzag
@example(8192)
@example(-8193)
@example((1 << 63) - 1)
@example(-(1 << 63))
@settings(max_examples=500)
def test_avro_long_encodes_exactly_as_fastavro(n):
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, "long", n)
    assert avro_long(n) == expected.getvalue()


@pytest.mark.parametrize("n", [1 << 63, -(1 << 63) - 1, 1 << 70])
def test_avro_long_refuses_what_does_not_fit(n):
    with pytest.raises(ValueError, match="does not fit"):
        avro_long(n)


FLAT = {
    "type": "record", "name": "Flat", "fields": [
        {"name": "s", "type": "string"}, {"name": "b", "type": "bytes"}, {"name": "i", "type": "int"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-nanos"}}, {"name": "ok", "type": "boolean"},
        {"name": "d", "type": "double"}, {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
        {"name": "n", "type": ["null", "long"]}, {"name": "ns", "type": ["null", "string"]}, {"name": "nb", "type": ["null", "boolean"]},
    ],
}
_LONGS = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
_FLAT_RECORDS = st.fixed_dictionaries({
    "s": st.text(), "b": st.binary(), "i": st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1), "ts": _LONGS,
    "ok": st.booleans(), "d": st.floats(allow_nan=False), "e": st.sampled_from("ABC"), "n": st.none() | _LONGS,
    "ns": st.none() | st.text(), "nb": st.none() | st.booleans(),
})


@given(_FLAT_RECORDS)
@settings(max_examples=300)
def test_the_flat_writer_encodes_exactly_as_fastavro(record):
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, fastavro.parse_schema(FLAT), record)
    assert FlatRecordWriter(FLAT).body(record) == expected.getvalue()


def test_the_flat_writer_names_the_field_that_does_not_fit():
    writer = FlatRecordWriter(FLAT)
    good = {"s": "s", "b": b"", "i": 1, "ts": 1, "ok": True, "d": 1.0, "e": "A", "n": None, "ns": None, "nb": None}
    for field, bad in (("ts", 1 << 64), ("e", "Z"), ("ok", "yes"), ("s", 5)):
        with pytest.raises(InvalidRecord, match=repr(field)):
            writer.body({**good, field: bad})
    with pytest.raises(InvalidRecord, match="nested"):
        FlatRecordWriter({"type": "record", "name": "R", "fields": [{"name": "nested", "type": {"type": "array", "items": "int"}}]})
