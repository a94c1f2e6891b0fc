"""Kafka's own wire protocol: the request header (API, version, correlation id, client id), the topic of
Produce and Fetch requests, trace headers from a Produce request's first record batch, and the first
non-zero error code of a response, walked field by field for its API and version."""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Callable

from tracetap.protocols.base import NEED_MORE, ErrorClass, Message, Parse, Status, malformed
from tracetap.protocols.http1 import TRACE_HEADERS
from tracetap.redact import kafka as redact_kafka
from tracetap.varint import read_uvarint

APIS = {0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit", 9: "OffsetFetch", 10: "FindCoordinator",
        11: "JoinGroup", 12: "Heartbeat", 13: "LeaveGroup", 14: "SyncGroup", 15: "DescribeGroups", 16: "ListGroups",
        17: "SaslHandshake", 18: "ApiVersions", 19: "CreateTopics", 20: "DeleteTopics", 22: "InitProducerId",
        23: "OffsetForLeaderEpoch", 24: "AddPartitionsToTxn", 26: "EndTxn", 32: "DescribeConfigs", 33: "AlterConfigs",
        36: "SaslAuthenticate", 37: "CreatePartitions", 42: "DeleteGroups", 60: "DescribeCluster", 61: "DescribeProducers"}
# First version that uses flexible (tagged-field) headers, per API.
FLEXIBLE_FROM = {0: 9, 1: 12, 2: 6, 3: 9, 8: 8, 9: 6, 10: 3, 11: 6, 12: 4, 13: 4, 14: 4, 15: 5, 16: 3, 17: 99, 18: 3, 19: 5, 20: 4,
                 22: 2, 23: 4, 24: 3, 26: 3, 32: 4, 33: 2, 36: 2, 37: 2, 42: 2, 60: 0, 61: 0}
# Newest version of each API (the stack's Kafka 3.9 ApiVersions answer, raised where Kafka 4.x added versions): detection
# takes a header with a newer version for noise.
MAX_VERSION = {0: 13, 1: 18, 2: 10, 3: 13, 8: 10, 9: 10, 10: 6, 11: 9, 12: 4, 13: 5, 14: 5, 15: 6, 16: 5, 17: 1, 18: 4, 19: 7,
               20: 6, 22: 6, 23: 4, 24: 5, 26: 5, 32: 4, 33: 2, 36: 2, 37: 3, 42: 2, 60: 2, 61: 0}
# A client newer than its broker asks ApiVersions at its own newest version (the broker answers UNSUPPORTED_VERSION).
_APIVERSIONS_HEADROOM = 4
# Kafka 4.0 dropped Produce v0-v2 and Fetch v0-v3 (the message formats before v2, KIP-896); no current client sends them,
# and HTTP/2 frame headers read as Produce v0.
_OLDEST_VERSION = {0: 3, 1: 4}
ERRORS = {-1: "UNKNOWN_SERVER_ERROR", 1: "OFFSET_OUT_OF_RANGE", 2: "CORRUPT_MESSAGE", 3: "UNKNOWN_TOPIC_OR_PARTITION",
          4: "INVALID_FETCH_SIZE", 5: "LEADER_NOT_AVAILABLE", 6: "NOT_LEADER_OR_FOLLOWER", 7: "REQUEST_TIMED_OUT",
          8: "BROKER_NOT_AVAILABLE", 9: "REPLICA_NOT_AVAILABLE", 10: "MESSAGE_TOO_LARGE", 12: "OFFSET_METADATA_TOO_LARGE",
          13: "NETWORK_EXCEPTION", 14: "COORDINATOR_LOAD_IN_PROGRESS", 15: "COORDINATOR_NOT_AVAILABLE", 16: "NOT_COORDINATOR",
          17: "INVALID_TOPIC_EXCEPTION", 18: "RECORD_LIST_TOO_LARGE", 19: "NOT_ENOUGH_REPLICAS", 20: "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
          21: "INVALID_REQUIRED_ACKS", 22: "ILLEGAL_GENERATION", 23: "INCONSISTENT_GROUP_PROTOCOL", 24: "INVALID_GROUP_ID",
          25: "UNKNOWN_MEMBER_ID", 26: "INVALID_SESSION_TIMEOUT", 27: "REBALANCE_IN_PROGRESS", 28: "INVALID_COMMIT_OFFSET_SIZE",
          29: "TOPIC_AUTHORIZATION_FAILED", 30: "GROUP_AUTHORIZATION_FAILED", 31: "CLUSTER_AUTHORIZATION_FAILED",
          32: "INVALID_TIMESTAMP", 33: "UNSUPPORTED_SASL_MECHANISM", 34: "ILLEGAL_SASL_STATE", 35: "UNSUPPORTED_VERSION",
          36: "TOPIC_ALREADY_EXISTS", 37: "INVALID_PARTITIONS", 38: "INVALID_REPLICATION_FACTOR", 40: "INVALID_CONFIG",
          41: "NOT_CONTROLLER", 42: "INVALID_REQUEST", 44: "POLICY_VIOLATION", 47: "INVALID_PRODUCER_EPOCH", 48: "INVALID_TXN_STATE",
          51: "CONCURRENT_TRANSACTIONS", 53: "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", 56: "KAFKA_STORAGE_ERROR",
          58: "SASL_AUTHENTICATION_FAILED", 69: "GROUP_ID_NOT_FOUND", 70: "FETCH_SESSION_ID_NOT_FOUND",
          71: "INVALID_FETCH_SESSION_EPOCH", 74: "FENCED_LEADER_EPOCH", 75: "UNKNOWN_LEADER_EPOCH", 76: "UNSUPPORTED_COMPRESSION_TYPE",
          79: "MEMBER_ID_REQUIRED", 87: "INVALID_RECORD", 100: "UNKNOWN_TOPIC_ID", 110: "FENCED_MEMBER_EPOCH"}
# Errors a client causes (bad request, auth, unknown names, too large, an offset that does not exist) versus the
# cluster's own trouble.
_CLIENT_ERRORS = frozenset({1, 2, 3, 4, 10, 12, 17, 18, 21, 22, 23, 24, 25, 26, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 40,
                            42, 44, 47, 48, 53, 58, 69, 76, 87, 100, 110})
# Codes that are steps of a protocol, not failures: a consumer's first JoinGroup is answered MEMBER_ID_REQUIRED with the
# id to join again with (KIP-394), so every group join would otherwise read as an error span and feed error alerts.
_STEPS = frozenset({79})
_MAX_SIZE = 100 * 1024 * 1024
_DETECT_REQUESTS = 8  # requests of one chunk checked by `detect`
_RESPONSE_HEAD_BYTES = 4096  # of a response's body kept for `finish`: the walk to an error code stops where it ends
_PRODUCE_HEAD_BYTES = 16384  # of a Produce request read for the first record's headers (they follow its key and value)
_MAX_RECORDS = 8  # records of the first batch searched for trace headers
_MAX_HEADERS = 16  # headers read per record
_MAX_INFLATED_BYTES = 65536  # of a gzip batch's records inflated


class Kafka:
    name = "KAFKA"
    symbols = ("KAFKA",)
    redaction = (redact_kafka.scans,)
    ports = frozenset({9092, 9093, 9094, 29092})

    def detect(self, first: bytes, port: int) -> bool:
        """Request headers from their structure alone (any port, any API, mid-connection): a known API at a version it
        has, a printable client id, and sizes that tile the chunk (a request it holds whole is followed by another one,
        the last may go on past it)."""
        at = 0
        for _ in range(_DETECT_REQUESTS):
            if len(first) - at < 14:  # too short for a header (the first), or a run that does not tile the chunk
                return False
            size, api, version, _, client_len = struct.unpack_from(">ihhih", first, at)
            newest = MAX_VERSION.get(api, -1) + (_APIVERSIONS_HEADROOM if api == 18 else 0)
            if not _OLDEST_VERSION.get(api, 0) <= version <= newest or not 10 <= size <= _MAX_SIZE:
                return False
            if not -1 <= client_len <= size - 10 or not all(0x20 <= b < 0x7F for b in first[at + 14:at + 14 + client_len]):
                return False
            if api == 0 and not _plausible_acks(_Reader(first, version >= FLEXIBLE_FROM[api], at + 14 + max(client_len, 0))):
                return False
            at += 4 + size
            if at >= len(first):
                return True
        return True

    def parse_request(self, data: bytes, final: bool) -> Parse:
        if len(data) < 14:
            return NEED_MORE if not final else malformed("Kafka request header cut")
        size, api, version, correlation, client_len = struct.unpack_from(">ihhih", data)
        if not 10 <= size <= _MAX_SIZE or api not in APIS or not 0 <= version <= 20:
            return malformed(f"not a Kafka request header (size {size}, api {api}, version {version})")
        offset = 14
        client_id = None
        if client_len >= 0:
            if len(data) < offset + client_len:
                return NEED_MORE if not final else malformed("client id cut")
            client_id = data[offset:offset + client_len].decode("utf-8", errors="replace")
            offset += client_len
        if api == 0 and not final and len(data) < min(4 + size, _PRODUCE_HEAD_BYTES):  # the first record's headers
            return NEED_MORE
        attributes = (("kafka.api_version", str(version)), ("kafka.correlation_id", str(correlation)))
        if client_id:
            attributes += (("kafka.client_id", client_id),)
        topic, trace_headers = None, ()
        if api in (0, 1):
            r = _Reader(data[:min(4 + size, _PRODUCE_HEAD_BYTES)], version >= FLEXIBLE_FROM[api], offset)
            topic, topics, batch = _read_topics(r, api, version)
            if topics > 1:
                attributes += (("kafka.topic_count", str(topics)),)
            if batch:
                trace_headers = _trace_headers(batch)
        return Parse(Status.MESSAGE, Message(is_request=True, size=4 + size, request_type=APIS[api], request_resource=topic,
                                             pair_key=correlation, trace_headers=trace_headers,
                                             attributes=attributes + (("kafka.api_key", str(api)),)))

    def parse_response(self, data: bytes, final: bool) -> Parse:
        if len(data) < 8:
            return NEED_MORE if not final else malformed("Kafka response header cut")
        size, correlation = struct.unpack_from(">ii", data)
        if not 4 <= size <= _MAX_SIZE:
            return malformed(f"Kafka response size {size}")
        if not final and len(data) < min(4 + size, 8 + _RESPONSE_HEAD_BYTES):  # the head `finish` walks
            return NEED_MORE
        return Parse(Status.MESSAGE, Message(is_request=False, size=4 + size, pair_key=correlation,
                                             head=data[8:min(4 + size, 8 + _RESPONSE_HEAD_BYTES)]))

    def finish(self, request: Message, response: Message) -> Message:
        """The first non-zero error code, now that the request says which API (and version) the response answers.
        A walk that runs past the kept head reports what it read before; none read: unknown."""
        attrs = dict(request.attributes)
        api, version = int(attrs["kafka.api_key"]), int(attrs["kafka.api_version"])
        r = _Reader(response.head, version >= FLEXIBLE_FROM.get(api, 99))
        try:
            if r.flexible and api != 18:  # response header v1: its tagged fields (ApiVersions keeps header v0)
                r.tags()
            _WALKS[api](r, version)
        except _Cut:
            if not r.errors:
                return response._replace(head=b"")
        if not r.errors:
            return response._replace(head=b"", response_code=0)
        code, topic, partition = r.errors[0]
        attributes = (("kafka.error_count", str(len(r.errors))),)
        if topic is not None:
            attributes += (("kafka.error_topic", topic),)
        if partition is not None:
            attributes += (("kafka.error_partition", str(partition)),)
        return response._replace(head=b"", response_code=code, response_message=ERRORS.get(code, f"ERROR_{code}"),
                                 error_class=None if code in _STEPS else ErrorClass.CLIENT_ERROR if code in _CLIENT_ERRORS else ErrorClass.SERVER_ERROR,
                                 attributes=attributes)


class _Cut(Exception):
    """The walk reached the end of the bytes it has."""


class _Reader:
    """Kafka's primitive types at a moving offset, classic or flexible (compact arrays and strings, tagged fields);
    `errors` collects the non-zero error codes met, with their topic and partition."""

    __slots__ = ("data", "flexible", "at", "errors")

    def __init__(self, data: bytes, flexible: bool, at: int = 0) -> None:
        self.data, self.flexible, self.at = data, flexible, at
        self.errors: list[tuple[int, str | None, int | None]] = []

    def skip(self, n: int) -> None:
        if n < 0 or self.at + n > len(self.data):
            raise _Cut
        self.at += n

    def _int(self, fmt: str, n: int) -> int:
        self.skip(n)
        return struct.unpack_from(fmt, self.data, self.at - n)[0]

    def i8(self) -> int:
        return self._int(">b", 1)

    def i16(self) -> int:
        return self._int(">h", 2)

    def i32(self) -> int:
        return self._int(">i", 4)

    def uvarint(self) -> int:
        try:
            value, self.at = read_uvarint(self.data, self.at)
        except ValueError:
            raise _Cut from None
        return value

    def varint(self) -> int:
        """A zigzag-encoded signed varint (the record format's lengths and counts)."""
        n = self.uvarint()
        return (n >> 1) ^ -(n & 1)

    def count(self) -> int:
        """An array's length (null reads as empty)."""
        return max(self.uvarint() - 1 if self.flexible else self.i32(), 0)

    def length(self, classic: Callable[[], int]) -> int:
        """A string's or bytes' length, -1 for null."""
        return self.uvarint() - 1 if self.flexible else classic()

    def string(self) -> str | None:
        n = self.length(self.i16)
        return None if n < 0 else self.text(n)

    def text(self, n: int) -> str:
        """The next n bytes as text (none for a negative n: a null)."""
        n = max(n, 0)
        self.skip(n)
        return self.data[self.at - n:self.at].decode("utf-8", errors="replace")

    def skip_bytes(self) -> None:
        self.skip(max(self.length(self.i32), 0))

    def uuid(self) -> str:
        self.skip(16)
        return str(uuid.UUID(bytes=bytes(self.data[self.at - 16:self.at])))

    def tags(self) -> None:
        if self.flexible:
            for _ in range(self.uvarint()):
                self.uvarint()
                self.skip(self.uvarint())

    def error(self, topic: str | None = None, partition: int | None = None) -> None:
        self.record(self.i16(), topic, partition)

    def record(self, code: int, topic: str | None = None, partition: int | None = None) -> None:
        if code:
            self.errors.append((code, topic, partition))


def _plausible_acks(r: _Reader) -> bool:
    """A Produce request's acks is -1, 0 or 1 (true when the chunk ends before it)."""
    try:
        r.tags()
        r.string()  # transactional id
        return -1 <= r.i16() <= 1
    except _Cut:
        return True


# Request bodies --------------------------------------------------------------------------------------------------

def _read_topics(r: _Reader, api: int, version: int) -> tuple[str | None, int, bytes]:
    """A Produce or Fetch request's first topic (from v13 on, which names topics by id: its id), how many topics it
    names, and (Produce) the first partition's record batch as far as it was captured."""
    try:
        r.tags()  # request header v2
        if api == 0:
            if version >= 3:
                r.string()  # transactional id
            r.skip(6)  # acks, timeout
        else:
            r.skip((4 if version <= 14 else 0) + 8)  # replica id (a tagged field from v15), max wait, min bytes
            r.skip((4 if version >= 3 else 0) + (1 if version >= 4 else 0) + (8 if version >= 7 else 0))  # max bytes, isolation, session
        topics = r.count()
        if not topics:
            return None, 0, b""
        topic = r.uuid() if version >= 13 else r.string()
        if api == 1 or not r.count():
            return topic, topics, b""
    except _Cut:
        return None, 0, b""
    try:
        r.i32()  # partition index
        n = r.length(r.i32)
    except _Cut:
        return topic, topics, b""
    return topic, topics, r.data[r.at:r.at + max(n, 0)]


def _trace_headers(batch: bytes) -> tuple[tuple[str, str], ...]:
    """Trace headers of the first record that has any, among the first records of a v2 record batch; gzip batches
    are inflated (bounded), other codecs (snappy, lz4, zstd) are not read."""
    if len(batch) < 61 or batch[16] != 2:  # magic 2: the record format with headers
        return ()
    attributes, count = struct.unpack_from(">h", batch, 21)[0], struct.unpack_from(">i", batch, 57)[0]
    records = batch[61:]
    if attributes & 0x07 == 1:
        try:
            records = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(records, _MAX_INFLATED_BYTES)
        except zlib.error:
            return ()
    elif attributes & 0x07:
        return ()
    r = _Reader(records, False)
    found: list[tuple[str, str]] = []
    try:
        for _ in range(min(count, _MAX_RECORDS)):
            length = r.varint()
            if length < 1:
                break
            end = r.at + length
            r.skip(1)  # attributes
            r.varint()  # timestamp delta
            r.varint()  # offset delta
            r.skip(max(r.varint(), 0))  # key
            r.skip(max(r.varint(), 0))  # value
            for _ in range(min(r.varint(), _MAX_HEADERS)):
                key = r.text(r.varint()).lower()
                value = r.text(r.varint())
                if key in TRACE_HEADERS:
                    found.append((key, value))
            if found:
                break
            r.at = end
    except _Cut:
        pass
    return tuple(found)


# Response bodies: each walk reads its API's fields in order, for every version, until the bytes end ----------------

def _top_level(after_throttle_from: int) -> Callable[[_Reader, int], None]:
    """An error code right after the throttle time (which the API has from `after_throttle_from` on)."""
    def walk(r: _Reader, version: int) -> None:
        if version >= after_throttle_from:
            r.skip(4)
        r.error()
    return walk


def _produce(r: _Reader, version: int) -> None:
    for _ in range(r.count()):
        topic = r.uuid() if version >= 13 else r.string()
        for _ in range(r.count()):
            partition = r.i32()
            r.error(topic, partition)
            r.skip(8 + (8 if version >= 2 else 0) + (8 if version >= 5 else 0))  # base offset, append time, log start
            if version >= 8:
                for _ in range(r.count()):  # record errors
                    r.skip(4)
                    r.string()
                    r.tags()
                r.string()  # error message
            r.tags()
        r.tags()


def _fetch(r: _Reader, version: int) -> None:
    if version >= 1:
        r.skip(4)  # throttle
    if version >= 7:
        r.error()
        r.skip(4)  # session id
    for _ in range(r.count()):
        topic = r.uuid() if version >= 13 else r.string()
        for _ in range(r.count()):
            partition = r.i32()
            r.error(topic, partition)
            r.skip(8 + (8 if version >= 4 else 0) + (8 if version >= 5 else 0))  # high watermark, last stable, log start
            if version >= 4:
                for _ in range(r.count()):  # aborted transactions
                    r.skip(16)
                    r.tags()
            if version >= 11:
                r.skip(4)  # preferred read replica
            r.skip_bytes()  # the records, by their length: never read
            r.tags()
        r.tags()


def _list_offsets(r: _Reader, version: int) -> None:
    if version >= 2:
        r.skip(4)
    for _ in range(r.count()):
        topic = r.string()
        for _ in range(r.count()):
            partition = r.i32()
            r.error(topic, partition)
            if version == 0:
                r.skip(8 * r.count())  # old-style offsets
            else:
                r.skip(16 + (4 if version >= 4 else 0))  # timestamp, offset, leader epoch
            r.tags()
        r.tags()


def _metadata(r: _Reader, version: int) -> None:
    if version >= 3:
        r.skip(4)
    for _ in range(r.count()):  # brokers
        r.skip(4)
        r.string()
        r.skip(4)
        if version >= 1:
            r.string()  # rack
        r.tags()
    if version >= 2:
        r.string()  # cluster id
    if version >= 1:
        r.skip(4)  # controller id
    for _ in range(r.count()):
        code = r.i16()
        topic = r.string()
        r.record(code, topic)
        r.skip((16 if version >= 10 else 0) + (1 if version >= 1 else 0))  # topic id, is internal
        for _ in range(r.count()):
            code = r.i16()
            r.record(code, topic, r.i32())
            r.skip(4 + (4 if version >= 7 else 0))  # leader, leader epoch
            for _ in range(3 if version >= 5 else 2):  # replicas, in-sync replicas, offline replicas
                r.skip(4 * r.count())
            r.tags()
        if version >= 8:
            r.skip(4)  # topic authorized operations
        r.tags()
    if 8 <= version <= 10:
        r.skip(4)  # cluster authorized operations
    if version >= 13:
        r.error()


def _offset_commit(r: _Reader, version: int) -> None:
    if version >= 3:
        r.skip(4)
    for _ in range(r.count()):
        topic = r.uuid() if version >= 10 else r.string()
        for _ in range(r.count()):
            partition = r.i32()
            r.error(topic, partition)
            r.tags()
        r.tags()


def _offset_fetch_topics(r: _Reader, version: int, by_id: bool) -> None:
    for _ in range(r.count()):
        topic = r.uuid() if by_id else r.string()
        for _ in range(r.count()):
            partition = r.i32()
            r.skip(8 + (4 if version >= 5 else 0))  # committed offset, leader epoch
            r.string()  # metadata
            r.error(topic, partition)
            r.tags()
        r.tags()


def _offset_fetch(r: _Reader, version: int) -> None:
    if version >= 3:
        r.skip(4)
    if version < 8:
        _offset_fetch_topics(r, version, False)
        if version >= 2:
            r.error()
        return
    for _ in range(r.count()):  # groups
        r.string()
        _offset_fetch_topics(r, version, version >= 10)
        r.error()
        r.tags()


def _find_coordinator(r: _Reader, version: int) -> None:
    if version >= 1:
        r.skip(4)
    if version < 4:
        r.error()
        return
    for _ in range(r.count()):
        r.string()  # key
        r.skip(4)
        r.string()  # host
        r.skip(4)
        r.error()
        r.string()
        r.tags()


def _describe_groups(r: _Reader, version: int) -> None:
    if version >= 1:
        r.skip(4)
    for _ in range(r.count()):
        r.error()
        if version >= 6:
            r.string()  # error message
        for _ in range(4):  # group id, state, protocol type, protocol data
            r.string()
        for _ in range(r.count()):  # members
            r.string()
            if version >= 4:
                r.string()  # group instance id
            r.string()
            r.string()
            r.skip_bytes()
            r.skip_bytes()
            r.tags()
        if version >= 3:
            r.skip(4)  # authorized operations
        r.tags()


def _create_topics(r: _Reader, version: int) -> None:
    if version >= 2:
        r.skip(4)
    for _ in range(r.count()):
        topic = r.string()
        if version >= 7:
            r.skip(16)
        r.error(topic)
        if version >= 1:
            r.string()
        if version >= 5:
            r.skip(6)  # partitions, replication factor
            for _ in range(r.count()):  # configs
                r.string()
                r.string()
                r.skip(3)  # read only, source, sensitive
                r.tags()
        r.tags()


def _delete_topics(r: _Reader, version: int) -> None:
    if version >= 1:
        r.skip(4)
    for _ in range(r.count()):
        topic = r.string()  # null from v6 on when the request named the topic by id
        if version >= 6:
            topic_id = r.uuid()
            topic = topic or topic_id
        r.error(topic)
        if version >= 5:
            r.string()
        r.tags()


def _offset_for_leader_epoch(r: _Reader, version: int) -> None:
    if version >= 2:
        r.skip(4)
    for _ in range(r.count()):
        topic = r.string()
        for _ in range(r.count()):
            code = r.i16()
            r.record(code, topic, r.i32())
            r.skip((4 if version >= 1 else 0) + 8)  # leader epoch, end offset
            r.tags()
        r.tags()


def _add_partitions_to_txn(r: _Reader, version: int) -> None:
    r.skip(4)
    if version >= 4:  # a batch of transactions: the top-level code only
        r.error()
        return
    for _ in range(r.count()):
        topic = r.string()
        for _ in range(r.count()):
            partition = r.i32()
            r.error(topic, partition)
            r.tags()
        r.tags()


def _describe_configs(r: _Reader, version: int) -> None:
    r.skip(4)
    for _ in range(r.count()):
        code = r.i16()
        r.string()  # error message
        r.skip(1)  # resource type
        r.record(code, r.string())
        for _ in range(r.count()):  # configs
            r.string()
            r.string()
            r.skip(3)  # read only, is default (v0) or config source (v1+), is sensitive
            if version >= 1:
                for _ in range(r.count()):  # synonyms
                    r.string()
                    r.string()
                    r.skip(1)
                    r.tags()
            if version >= 3:
                r.skip(1)
                r.string()
            r.tags()
        r.tags()


def _alter_configs(r: _Reader, version: int) -> None:
    r.skip(4)
    for _ in range(r.count()):
        code = r.i16()
        r.string()  # error message
        r.skip(1)  # resource type
        r.record(code, r.string())
        r.tags()


def _create_partitions(r: _Reader, version: int) -> None:
    r.skip(4)
    for _ in range(r.count()):
        topic = r.string()
        r.error(topic)
        r.string()
        r.tags()


def _delete_groups(r: _Reader, version: int) -> None:
    r.skip(4)
    for _ in range(r.count()):
        r.string()
        r.error()
        r.tags()


def _describe_producers(r: _Reader, version: int) -> None:
    r.skip(4)
    for _ in range(r.count()):
        topic = r.string()
        for _ in range(r.count()):
            partition = r.i32()
            r.error(topic, partition)
            r.string()
            for _ in range(r.count()):  # active producers
                r.skip(36)
                r.tags()
            r.tags()
        r.tags()


_WALKS: dict[int, Callable[[_Reader, int], None]] = {
    0: _produce, 1: _fetch, 2: _list_offsets, 3: _metadata, 8: _offset_commit, 9: _offset_fetch, 10: _find_coordinator,
    11: _top_level(2), 12: _top_level(1), 13: _top_level(1), 14: _top_level(1), 15: _describe_groups, 16: _top_level(1),
    17: _top_level(99), 18: _top_level(99), 19: _create_topics, 20: _delete_topics, 22: _top_level(0),
    23: _offset_for_leader_epoch, 24: _add_partitions_to_txn, 26: _top_level(0), 32: _describe_configs, 33: _alter_configs,
    36: _top_level(99), 37: _create_partitions, 42: _delete_groups, 60: _top_level(0), 61: _describe_producers}


KAFKA = Kafka()
