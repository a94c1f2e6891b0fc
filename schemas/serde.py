"""Avro serde in the Confluent wire format: magic byte 0, a 4-byte big-endian schema id, the Avro body.

Built once per topic from a registry client; schemas are parsed once and cached by id.
Undecodable bytes raise UndecodableRecord with a reason a consumer puts on the dead-letter topic.
Timestamps decode as integers (ms or ns, as the field's logical type says): the core works in integers.
"""

from __future__ import annotations

import enum
import io
import struct
from typing import Any

import fastavro
from fastavro.types import Schema

from schemas.registry import SchemaRegistry, UnknownSchemaId
from tracetap.errors import TracetapError
from tracetap.varint import uvarint

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")


class DecodeFailure(enum.StrEnum):
    """Why bytes are not a record; the names are DeadLetterReason symbols."""

    BAD_MAGIC_BYTE = "BAD_MAGIC_BYTE"
    TRUNCATED = "TRUNCATED"
    UNKNOWN_SCHEMA_ID = "UNKNOWN_SCHEMA_ID"
    UNDECODABLE_PAYLOAD = "UNDECODABLE_PAYLOAD"


class UndecodableRecord(TracetapError):
    """The bytes are not a Confluent-framed Avro record we can read. Dead-letter them."""

    def __init__(self, reason: DecodeFailure, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class InvalidRecord(TracetapError):
    """A record does not fit its schema; a bug in the producing code, reported with the field."""


class AvroSerializer:
    """Encodes dicts for one subject. The schema is registered (or looked up) once, here."""

    def __init__(self, registry: SchemaRegistry, subject: str, schema: dict[str, Any], *, auto_register: bool = True) -> None:
        self.subject = subject
        self.schema_id = registry.register(subject, schema) if auto_register else registry.lookup(subject, schema)
        self._parsed = fastavro.parse_schema(schema)
        self._header = _HEADER.pack(MAGIC_BYTE, self.schema_id)

    def frame(self, body: bytes) -> bytes:
        """Wire header + an Avro body encoded elsewhere (by a hand-written encoder) for this subject's schema."""
        return self._header + body

    def __call__(self, record: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        out.write(self._header)
        try:
            fastavro.schemaless_writer(out, self._parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise InvalidRecord(f"record does not fit {self.subject}: {type(exc).__name__}: {exc}") from None
        return out.getvalue()


# Avro binary primitives, for hand-written encoders on hot paths (see producers/ebpf/events.py); a test
# holds each such encoder to fastavro's output.
# Varints by table: every value below 2**14 whole, and 14-bit chunks (two continued bytes) for the rest.
_VARINTS = [uvarint(n) for n in range(1 << 14)]
_CHUNKS = [bytes([(n & 0x7F) | 0x80, (n >> 7) | 0x80]) for n in range(1 << 14)]


def avro_long(n: int) -> bytes:
    """Avro int/long: zigzag, then little-endian base-128 varint."""
    zigzag = (n << 1) ^ (n >> 63)
    if zigzag < 0x4000:
        if zigzag < 0:
            raise ValueError(f"{n} does not fit an Avro long")
        return _VARINTS[zigzag]
    if zigzag >> 64:
        raise ValueError(f"{n} does not fit an Avro long")
    out = b""
    while zigzag >= 0x4000:
        out += _CHUNKS[zigzag & 0x3FFF]
        zigzag >>= 14
    return out + _VARINTS[zigzag]


def avro_bytes(value: bytes) -> bytes:
    """Avro bytes (and, UTF-8 encoded, string): the length as a long, then the bytes."""
    return avro_long(len(value)) + value


AVRO_NULL = b"\x00"  # branch 0 of a ["null", T] union
AVRO_SOME = b"\x02"  # branch 1 of a ["null", T] union, followed by the T


class FlatRecordWriter:
    """A hand-compiled Avro encoder for flat records (primitives, enums, [null, primitive] unions): about
    3x faster than fastavro's writer for the agents' per-packet records. Field order comes from the schema.
    """

    def __init__(self, schema: dict[str, Any]) -> None:
        self._fields = tuple((f["name"], _field_writer(schema["name"], f["name"], f["type"])) for f in schema["fields"])

    def body(self, record: dict[str, Any]) -> bytes:
        """The Avro body (no wire header) of one record; InvalidRecord names the field that does not fit."""
        try:
            return b"".join([write(record[name]) for name, write in self._fields])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            bad = next((name for name, write in self._fields if not _fits(write, record.get(name))), "?")
            raise InvalidRecord(f"field {bad!r} does not fit: {type(exc).__name__}: {exc}") from None


def _fits(write: Any, value: Any) -> bool:
    try:
        write(value)
        return True
    except (ValueError, TypeError, KeyError, AttributeError):
        return False


def _string(value: str) -> bytes:
    return avro_bytes(value.encode())


def _boolean(value: bool) -> bytes:
    if not isinstance(value, bool):
        raise TypeError(f"{value!r} is not a boolean")
    return b"\x01" if value else b"\x00"


def _field_writer(record: str, name: str, avro_type: Any) -> Any:
    if isinstance(avro_type, list) and len(avro_type) == 2 and avro_type[0] == "null":
        inner = _field_writer(record, name, avro_type[1])
        return lambda value: AVRO_NULL if value is None else AVRO_SOME + inner(value)
    if isinstance(avro_type, dict) and avro_type.get("type") == "enum":
        return {symbol: avro_long(i) for i, symbol in enumerate(avro_type["symbols"])}.__getitem__
    primitive = avro_type.get("type") if isinstance(avro_type, dict) else avro_type  # a logical type over a primitive
    writers = {"int": avro_long, "long": avro_long, "string": _string, "bytes": avro_bytes, "boolean": _boolean,
               "double": struct.Struct("<d").pack, "float": struct.Struct("<f").pack}
    if isinstance(primitive, str) and primitive in writers:
        return writers[primitive]
    raise InvalidRecord(f"{record}.{name}: FlatRecordWriter takes primitives, enums and [null, primitive] only, not {avro_type}")


class AvroDeserializer:
    """Decodes any schema id the registry knows; with reader_schema, resolves to that shape
    (so an old reader reads a newer writer's records, Avro schema resolution)."""

    def __init__(self, registry: SchemaRegistry, reader_schema: dict[str, Any] | None = None) -> None:
        self._registry = registry
        self._reader = fastavro.parse_schema(_plain_timestamps(reader_schema)) if reader_schema else None
        self._writers: dict[int, Schema] = {}

    def __call__(self, data: bytes | None) -> dict[str, Any]:
        if data is None or len(data) < _HEADER.size:
            size = 0 if data is None else len(data)
            raise UndecodableRecord(DecodeFailure.TRUNCATED, f"{size} bytes, shorter than the 5-byte Confluent header")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise UndecodableRecord(DecodeFailure.BAD_MAGIC_BYTE, f"first byte is 0x{data[0]:02x}, not the Confluent magic byte 0x00")
        writer = self._writer(schema_id)
        body = io.BytesIO(data)
        body.seek(_HEADER.size)
        try:
            record = fastavro.schemaless_reader(body, writer, self._reader)
        except EOFError:
            raise UndecodableRecord(DecodeFailure.TRUNCATED, f"body ends early for schema id {schema_id}") from None
        except Exception as exc:  # fastavro raises many types on garbage; all mean the same here
            raise UndecodableRecord(DecodeFailure.UNDECODABLE_PAYLOAD, f"schema id {schema_id}: {type(exc).__name__}: {exc}") from None
        trailing = len(data) - body.tell()
        if trailing:
            raise UndecodableRecord(DecodeFailure.UNDECODABLE_PAYLOAD, f"{trailing} bytes left after the record (schema id {schema_id})")
        return record  # type: ignore[return-value]

    def _writer(self, schema_id: int) -> Schema:
        writer = self._writers.get(schema_id)
        if writer is None:
            try:
                schema = self._registry.schema_by_id(schema_id)
            except UnknownSchemaId:
                raise UndecodableRecord(DecodeFailure.UNKNOWN_SCHEMA_ID, f"the registry has no schema id {schema_id}") from None
            writer = fastavro.parse_schema(_plain_timestamps(schema))
            self._writers[schema_id] = writer
        return writer


_TIMESTAMP_TYPES = {"timestamp-millis", "timestamp-micros", "timestamp-nanos", "local-timestamp-millis", "local-timestamp-micros", "local-timestamp-nanos"}


def _plain_timestamps(schema: Any) -> Any:
    """A copy of the schema whose timestamp logical types are dropped, so they read as ints."""
    if isinstance(schema, dict):
        if schema.get("logicalType") in _TIMESTAMP_TYPES:
            return {k: _plain_timestamps(v) for k, v in schema.items() if k != "logicalType"}
        return {k: _plain_timestamps(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_plain_timestamps(s) for s in schema]
    return schema
