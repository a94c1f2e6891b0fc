"""Every registered parser on arbitrary and mutated bytes never raises, and edge cases computed by hand."""

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzzing import PROTOCOLS
from tests.parser_seeds import SEEDS
from tracetap.endpoints import endpoint_of
from tracetap.protocols import all_protocols, detect
from tracetap.protocols.base import Parse, Status
from tracetap.protocols.dns import DNS_UDP
from tracetap.protocols.http1 import HTTP1
from tracetap.protocols.redis import REDIS
from tracetap.protocols.tls import TLS

SAMPLES = [
    b"GET /a/b?c=d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
    b"%2\r\n+a\r\n:1\r\n$1\r\nb\r\n*2\r\n_\r\n,1.5\r\n",
    struct.pack(">HHHHHH", 7, 0x8183, 1, 0, 0, 0) + b"\x03foo\x04test\x00\x00\x1c\x00\x01",
]


def _check(result):
    assert isinstance(result, Parse) and isinstance(result.status, Status)
    if result.status is Status.MESSAGE:
        assert result.message.size is None or result.message.size > 0
    else:
        assert result.message is None


@pytest.mark.parametrize("protocol", all_protocols(), ids=lambda p: f"{p.name}-{type(p).__name__}-{getattr(p, 'over_tcp', '')}")
@given(data=st.binary(max_size=600), final=st.booleans(), port=st.integers(0, 65535))
@settings(max_examples=300)
def test_parsers_never_raise_on_arbitrary_bytes(protocol, data, final, port):
    _check(protocol.parse_request(data, final))
    _check(protocol.parse_response(data, final))
    assert protocol.detect(data, port) in (True, False)


@pytest.mark.parametrize("protocol", all_protocols(), ids=lambda p: f"{p.name}-{getattr(p, 'over_tcp', '')}")
@given(sample=st.sampled_from(SAMPLES), cut=st.integers(0, 200), flips=st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=4),
       final=st.booleans())
@settings(max_examples=300)
def test_parsers_never_raise_on_mutated_real_messages(protocol, sample, cut, flips, final):
    data = bytearray(sample[:cut] if cut < len(sample) else sample)
    for position, value in flips:
        if position < len(data):
            data[position] = value
    _check(protocol.parse_request(bytes(data), final))
    _check(protocol.parse_response(bytes(data), final))


def test_http_message_sizes_by_hand():
    assert HTTP1.parse_request(SAMPLES[0], False).message.size == len(SAMPLES[0])
    assert HTTP1.parse_response(SAMPLES[1], False).message.size == len(SAMPLES[1])
    # a chunked body whose end is beyond the capture: size unknown, not a wrong number
    assert HTTP1.parse_response(SAMPLES[1][:-7], True).message.size is None
    assert HTTP1.parse_request(b"GET / HTTP/1.1\r\nContent-Length: x1\r\n\r\n", False).status is Status.MALFORMED
    assert HTTP1.parse_response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", False).message.size == 49


def test_redis_pipeline_sizes_and_bad_lengths_by_hand():
    two = SAMPLES[2] + b"*1\r\n$4\r\nPING\r\n"
    first = REDIS.parse_request(two, False).message
    assert (first.request_type, first.request_resource, first.size) == ("SET", "k", len(SAMPLES[2]))
    assert REDIS.parse_request(two[first.size:], False).message.request_type == "PING"
    assert REDIS.parse_response(SAMPLES[3], False).message.size == len(SAMPLES[3])
    assert REDIS.parse_request(b"*1\r\n$-5\r\nPING\r\n", False).status is Status.MALFORMED
    assert REDIS.parse_response(b"*" * 1 + b"1\r\n" * 40, False).status in (Status.MALFORMED, Status.NEED_MORE)
    assert REDIS.parse_request(b"*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n", False).message.request_resource is None


def test_dns_compression_loops_and_names_by_hand():
    looping = struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"  # the name points at itself
    assert DNS_UDP.parse_request(looping, True).status is Status.MALFORMED
    answer = DNS_UDP.parse_response(SAMPLES[4], True).message
    assert (answer.request_domain, answer.request_type, answer.response_message, answer.pair_key) == ("foo.test", "AAAA", "NXDOMAIN", 7)


def test_detection_by_first_bytes_and_port():
    assert detect("TCP", SAMPLES[0], 12345) is HTTP1
    assert detect("TCP", SAMPLES[2], 12345) is REDIS
    assert detect("TCP", b"\x16\x03\x01\x02\x00\x01", 443) is TLS  # a ClientHello record: TLS (its records, not its plaintext)
    assert detect("TCP", b"\x16\x03\x01\x00\x00\x01", 443) is None  # an empty record is no record
    assert detect("UDP", SAMPLES[4], 53) is None  # a response is not a client's first message


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_recorded_conversations_are_claimed_by_their_own_protocol_alone_on_any_port(name):
    """Detection mid-connection: any recorded chunk of a conversation may be the first an agent sees. On a port that
    names no protocol, none is claimed by another protocol, and each client's first message is claimed by its own."""
    l4 = "UDP" if name == "DNS-UDP" else "TCP"
    for connection in SEEDS[name]:
        claims = {detect(l4, data, 40000) for _, data in connection} - {None}
        assert claims <= {PROTOCOLS[name]}, f"{name} chunks claimed by {[p.name for p in claims]}"
        first = next(data for to_server, data in connection if to_server)
        assert detect(l4, first, 40000) is PROTOCOLS[name]


@pytest.mark.parametrize("schema", ["l7_span", "red_metric", "path_record"])
def test_the_schemas_name_every_protocol_symbol_the_protocol_modules_declare(schema):
    """A protocol module declares the L7Protocol symbols its spans carry; adding one means adding it to the enum."""
    fields = json.loads((Path(__file__).parents[2] / "schemas" / "avro" / f"{schema}.avsc").read_text())["fields"]
    [enum] = [f["type"] for f in fields if f["name"] == "protocol"]
    declared = {symbol for protocol in all_protocols() for symbol in protocol.symbols}
    assert declared == {"HTTP", "HTTP2", "GRPC", "DNS", "REDIS", "MYSQL", "POSTGRESQL", "KAFKA", "TLS"}
    assert declared <= set(enum["symbols"]) and enum["default"] == "UNKNOWN"  # readers of older schemas map new symbols to it


def test_endpoints_follow_the_rule_each_protocol_module_declares():
    assert endpoint_of("HTTP", "GET", "/orders/42/items/7f3a9c01d2e4") == "GET /orders/{id}/items/{id}"
    assert endpoint_of("HTTP2", "POST", "/orders/42") == "POST /orders/{id}"
    assert endpoint_of("GRPC", "POST", "/shop.Orders/Get") == "/shop.Orders/Get"
    assert (endpoint_of("DNS", "AAAA", "db.shop"), endpoint_of("REDIS", "GET", "session:42")) == ("AAAA", "GET")
    assert endpoint_of("UNKNOWN", None, None) is None


def _kafka_request(api, version, body, flexible=False):
    header = struct.pack(">hhih", api, version, 5, 1) + b"c" + (b"\x00" if flexible else b"")
    return struct.pack(">i", len(header) + len(body)) + header + body


def test_kafka_produce_requests_name_their_topic_in_both_header_formats():
    from tracetap.protocols.kafka import KAFKA

    v7 = _kafka_request(0, 7, struct.pack(">hhii", -1, 1, 1000, 1) + struct.pack(">h", 6) + b"orders" + b"\x00" * 8)
    v9 = _kafka_request(0, 9, b"\x00" + struct.pack(">hi", 1, 1000) + b"\x02" + b"\x07orders" + b"\x00" * 8, flexible=True)
    for request in (v7, v9):
        message = KAFKA.parse_request(request, False).message
        assert (message.request_type, message.request_resource, message.size, message.pair_key) == ("Produce", "orders", len(request), 5)
        assert ("kafka.client_id", "c") in message.attributes


def test_kafka_error_codes_are_read_where_the_api_puts_them():
    from tracetap.protocols.base import ErrorClass
    from tracetap.protocols.kafka import KAFKA

    heartbeat = KAFKA.parse_request(_kafka_request(12, 1, b"\x00"), False).message
    response = KAFKA.parse_response(struct.pack(">ii", 10, 5) + struct.pack(">ih", 0, 27), False).message  # throttle, REBALANCE_IN_PROGRESS
    finished = KAFKA.finish(heartbeat, response)
    assert (finished.response_code, finished.response_message, finished.error_class) == (27, "REBALANCE_IN_PROGRESS", ErrorClass.SERVER_ERROR)
    fetch = KAFKA.parse_request(_kafka_request(1, 4, b"\x00" * 20), False).message
    assert KAFKA.finish(fetch, response).response_code is None  # per-partition errors: not decoded
