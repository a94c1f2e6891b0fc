"""Kafka's own wire protocol: the request header (API, version, correlation id, client id), the
Produce request's topic, and response error codes for the APIs that carry one at a fixed place."""

from __future__ import annotations

import struct

from tracetap.protocols.base import NEED_MORE, ErrorClass, Message, Parse, Status, malformed
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
# Where the response body's error_code sits: (api, first version) -> bytes before it (a throttle_time_ms, or nothing).
_ERROR_AT = {18: ((0, 0),), 12: ((0, 0), (1, 4)), 13: ((0, 0), (1, 4)), 14: ((0, 0), (1, 4)), 11: ((0, 0), (2, 4)),
             10: ((0, 0), (1, 4)), 22: ((0, 4),), 26: ((0, 4),), 17: ((0, 0),), 36: ((0, 0),), 60: ((0, 4),)}
ERRORS = {-1: "UNKNOWN_SERVER_ERROR", 1: "OFFSET_OUT_OF_RANGE", 3: "UNKNOWN_TOPIC_OR_PARTITION", 5: "LEADER_NOT_AVAILABLE",
          6: "NOT_LEADER_OR_FOLLOWER", 7: "REQUEST_TIMED_OUT", 15: "COORDINATOR_NOT_AVAILABLE", 16: "NOT_COORDINATOR",
          22: "ILLEGAL_GENERATION", 25: "UNKNOWN_MEMBER_ID", 27: "REBALANCE_IN_PROGRESS", 29: "TOPIC_AUTHORIZATION_FAILED",
          30: "GROUP_AUTHORIZATION_FAILED", 31: "CLUSTER_AUTHORIZATION_FAILED", 33: "UNSUPPORTED_SASL_MECHANISM",
          35: "UNSUPPORTED_VERSION", 36: "TOPIC_ALREADY_EXISTS", 58: "SASL_AUTHENTICATION_FAILED", 79: "MEMBER_ID_REQUIRED"}
# Errors a client causes (bad request, auth, unknown names) versus the cluster's own trouble.
_CLIENT_ERRORS = frozenset({3, 22, 25, 29, 30, 31, 33, 35, 36, 58, 79})
_MAX_SIZE = 100 * 1024 * 1024


class Kafka:
    name = "KAFKA"
    symbols = ("KAFKA",)
    redaction = (redact_kafka.scans,)
    ports = frozenset({9092, 9093, 9094, 29092})

    def detect(self, first: bytes, port: int) -> bool:
        if len(first) < 14:
            return False
        size, api, version, _, client_len = struct.unpack_from(">ihhih", first)
        return 10 <= size <= _MAX_SIZE and api in APIS and 0 <= version <= 20 and -1 <= client_len <= 256

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
        flexible = version >= FLEXIBLE_FROM.get(api, 99)
        if flexible:
            offset = _skip_tags(data, offset)
        topic = _produce_topic(data, offset, version, flexible) if api == 0 and offset is not None else None
        attributes = (("kafka.api_version", str(version)), ("kafka.correlation_id", str(correlation)))
        if client_id:
            attributes += (("kafka.client_id", client_id),)
        return Parse(Status.MESSAGE, Message(is_request=True, size=4 + size, request_type=APIS[api], request_resource=topic,
                                             pair_key=correlation, attributes=attributes + (("kafka.api_key", str(api)),)))

    def parse_response(self, data: bytes, final: bool) -> Parse:
        if len(data) < 8:
            return NEED_MORE if not final else malformed("Kafka response header cut")
        size, correlation = struct.unpack_from(">ii", data)
        if not 4 <= size <= _MAX_SIZE:
            return malformed(f"Kafka response size {size}")
        return Parse(Status.MESSAGE, Message(is_request=False, size=4 + size, pair_key=correlation, head=data[8:40]))

    def finish(self, request: Message, response: Message) -> Message:
        """The error code, now that the request says which API (and version) the response answers."""
        attrs = dict(request.attributes)
        api, version = int(attrs["kafka.api_key"]), int(attrs["kafka.api_version"])
        places = _ERROR_AT.get(api)
        if not places:
            return response
        skip = max((before for first, before in places if version >= first), default=None)
        if skip is None:
            return response
        if version >= FLEXIBLE_FROM.get(api, 99) and api != 18:  # response header v1: its tagged fields (empty: 1 byte)
            skip += 1
        if len(response.head) < skip + 2:
            return response
        code = struct.unpack_from(">h", response.head, skip)[0]
        error = None if code == 0 else ErrorClass.CLIENT_ERROR if code in _CLIENT_ERRORS else ErrorClass.SERVER_ERROR
        return Message(is_request=False, size=response.size, response_code=code, response_message=None if code == 0 else ERRORS.get(code, f"ERROR_{code}"),
                       error_class=error, pair_key=response.pair_key)


def _uvarint(data: bytes, offset: int) -> tuple[int, int] | None:
    try:
        return read_uvarint(data, offset)
    except ValueError:
        return None


def _skip_tags(data: bytes, offset: int) -> int | None:
    count = _uvarint(data, offset)
    if count is None:
        return None
    n, offset = count
    for _ in range(min(n, 64)):
        tag = _uvarint(data, offset)
        length = _uvarint(data, tag[1]) if tag else None
        if length is None:
            return None
        offset = length[1] + length[0]
    return offset


def _produce_topic(data: bytes, offset: int, version: int, flexible: bool) -> str | None:
    """The first topic of a Produce request (v3+: transactional id, acks, timeout, then the topics)."""
    try:
        if version >= 3:
            if flexible:
                n = _uvarint(data, offset)
                if n is None:
                    return None
                offset = n[1] + max(n[0] - 1, 0)
            else:
                length = struct.unpack_from(">h", data, offset)[0]
                offset += 2 + max(length, 0)
        offset += 2 + 4  # acks, timeout
        if flexible:
            count = _uvarint(data, offset)
            name_len = _uvarint(data, count[1]) if count else None
            if not count or not name_len or count[0] < 2:
                return None
            start, length = name_len[1], name_len[0] - 1
        else:
            count, length = struct.unpack_from(">ih", data, offset)
            if count < 1:
                return None
            start = offset + 6
        name = data[start:start + length]
        return name.decode("utf-8", errors="replace") if len(name) == length and length > 0 else None
    except struct.error:
        return None


KAFKA = Kafka()
