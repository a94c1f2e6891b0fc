"""HTTP/2 and gRPC from real clients and servers: curl (--http2-prior-knowledge) against nginx serving h2c, and
grpcio's client against a grpcio server (unary, server, client and bidirectional streaming, a failing call, a
cancelled one), recorded through a relay and assembled into spans. Expected values are what the test asked the
clients to do."""

import subprocess
import threading
import time

import grpc
import pytest

from tests import servers
from tests.recording import RecordingRelay
from tracetap.assembly import AssemblyConfig, SocketAssembler
from tracetap.model import SocketData
from tracetap.protocols import detect
from tracetap.protocols.http2 import HEADERS, HTTP2, frame_header

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _assemble(connection, server_port, skip=0, role="CLIENT", state_round_trip=False):
    """The client's view of one recorded connection from its `skip`-th recv on (a capture that starts
    mid-connection), as the eBPF agent would report it."""
    config = AssemblyConfig()
    assembler, spans, sent, t = SocketAssembler(config), [], {"c2s": 0, "s2c": 0}, 10_000
    for direction, data in connection[skip:]:
        t += 1000
        spans += assembler.add(SocketData("node", t, t + 10, 1, 1, "client", 3, direction == "c2s", len(data), "TCP", "127.0.0.1",
                                          50000, "127.0.0.1", server_port, role, data, 1 + sent[direction], None))
        sent[direction] += len(data)
        if state_round_trip:  # as a stream job restarting from a checkpoint after every event
            assembler = SocketAssembler.from_state(assembler.to_state(), config)
    return assembler, spans + assembler.close(t + 1)


@pytest.fixture(scope="module")
def curl_recording():
    with servers.nginx_h2c() as port:
        relay = RecordingRelay(port)
        base = f"http://127.0.0.1:{relay.port}"
        codes = []
        for path, headers in (("/index.html", ["-H", f"traceparent: {TRACEPARENT}", "-H", "Authorization: Bearer s3cret"]),
                              ("/missing", []), ("/fail", []), ("/teapot", [])):
            # one connection per request: curl 7.88 cannot reuse a prior-knowledge connection (its "framing layer" error)
            out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", *headers, "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                                  base + path], capture_output=True, text=True, timeout=30)
            codes.append(out.stdout)
        time.sleep(0.3)
        relay.close()
        yield relay, port, codes


def test_curl_over_h2c_gives_one_http2_span_per_request_with_status_authority_and_trace_header(curl_recording):
    relay, port, codes = curl_recording
    assert codes == ["2 200", "2 404", "2 503", "2 418"]
    connections = relay.connections()
    assert len(connections) == 4 and all(c[0][1].startswith(b"PRI * HTTP/2.0") for c in connections)
    spans, malformed = [], 0
    for connection in connections:
        assembler, found = _assemble(connection, port)
        spans += found
        malformed += assembler.counters.malformed + assembler.counters.unmatched_responses
    assert malformed == 0
    assert [(s.protocol, s.request_type, s.request_resource, s.response_code, s.error_class) for s in spans] == [
        ("HTTP2", "GET", "/index.html", 200, None), ("HTTP2", "GET", "/missing", 404, "CLIENT_ERROR"),
        ("HTTP2", "GET", "/fail", 503, "SERVER_ERROR"), ("HTTP2", "GET", "/teapot", 418, "CLIENT_ERROR")]
    assert all(s.request_domain == f"127.0.0.1:{relay.port}" and s.attributes["http2.stream_id"] == "1" for s in spans)
    assert spans[0].trace_headers == {"traceparent": TRACEPARENT} and spans[0].endpoint == "GET /index.html"
    assert spans[0].response_bytes > 39 and not spans[0].connection_closed  # the 39-byte page and its frames
    assert all("http2.headers" not in s.attributes for s in spans)


@pytest.fixture(scope="module")
def grpc_recording():
    with servers.grpc_echo() as port:
        relay = RecordingRelay(port)
        channel = grpc.insecure_channel(f"127.0.0.1:{relay.port}")
        say = channel.unary_unary("/demo.Echo/Say")
        results = [say(b"a", metadata=(("traceparent", TRACEPARENT),), timeout=10)]
        try:
            say(b"missing", timeout=10)
        except grpc.RpcError as e:
            results.append((e.code(), e.details()))
        results.append(list(channel.unary_stream("/demo.Echo/Count")(b"3", timeout=10)))
        results.append(channel.stream_unary("/demo.Echo/Sum")(iter([b"1", b"2", b"3"]), timeout=10))
        results.append(list(channel.stream_stream("/demo.Echo/Chat")(iter([b"x", b"y"]), timeout=10)))
        results += [say(b"b%d" % i, timeout=10) for i in range(3)]
        results.append(_cancelled_call(channel))
        results.append(say(b"after", timeout=10))
        channel.close()
        time.sleep(0.3)
        relay.close()
        yield relay, port, results


def _cancelled_call(channel):
    """A bidirectional call the client cancels after one reply: the server never ends the stream."""
    release = threading.Event()

    def requests():
        yield b"first"
        release.wait(10)

    call = channel.stream_stream("/demo.Echo/Chat")(requests(), timeout=10)
    first = next(call)
    call.cancel()
    release.set()
    return first


GRPC_CALLS = [("/demo.Echo/Say", 0, None), ("/demo.Echo/Say", 5, "CLIENT_ERROR"), ("/demo.Echo/Count", 0, None),
              ("/demo.Echo/Sum", 0, None), ("/demo.Echo/Chat", 0, None)] + [("/demo.Echo/Say", 0, None)] * 3


def test_grpc_calls_of_every_kind_give_one_span_each_with_grpc_status_from_the_trailers(grpc_recording):
    relay, port, results = grpc_recording
    assert results == [b"hello a", (grpc.StatusCode.NOT_FOUND, "no such thing"), [b"0", b"1", b"2"], b"6", [b"X", b"Y"],
                       b"hello b0", b"hello b1", b"hello b2", b"FIRST", b"hello after"]
    (connection,) = relay.connections()
    assembler, spans = _assemble(connection, port)
    assert assembler.protocol is HTTP2 and assembler.counters.malformed == 0 and assembler.counters.unmatched_responses == 0
    assert [(s.request_resource, s.response_code, s.error_class) for s in spans] == GRPC_CALLS + [
        ("/demo.Echo/Chat", None, "CLIENT_ERROR"), ("/demo.Echo/Say", 0, None)]
    assert all(s.protocol == "GRPC" and s.request_type == "POST" and s.endpoint == s.request_resource for s in spans)
    assert [s.response_message for s in spans[:2]] == ["OK", "no such thing"]
    assert spans[0].trace_headers == {"traceparent": TRACEPARENT}
    assert spans[0].attributes["grpc.service"] == "demo.Echo" and spans[0].attributes["grpc.method"] == "Say"
    assert spans[0].attributes["http.status"] == "200"
    assert "cancelled by the client" in spans[8].response_message
    assert [int(s.attributes["http2.stream_id"]) for s in spans] == list(range(1, 21, 2))
    assert all("http2.headers" not in s.attributes for s in spans)
    # every frame the client wrote on a call's stream before the server ended it counts in its request's bytes: HEADERS,
    # DATA (several when it streams), trailers, flow control; summed here by frame headers alone, from the recorded
    # bytes in the order they crossed (a WINDOW_UPDATE the client sends after the server's trailers is no request's)
    buffers, at = {"c2s": b"", "s2c": b""}, {"c2s": len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), "s2c": 0}
    written, ended = {}, set()
    for direction, data in connection:
        buffers[direction] += data
        frames = buffers[direction]
        while at[direction] + 9 <= len(frames):
            head = frames[at[direction]:at[direction] + 9]
            length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
            stream = int.from_bytes(head[5:9], "big") & 0x7FFF_FFFF
            if at[direction] + 9 + length > len(frames):
                break
            if direction == "s2c" and kind in (0, 1) and flags & 0x1:
                ended.add(stream)
            elif direction == "c2s" and stream not in ended:
                written[stream] = written.get(stream, 0) + 9 + length
            at[direction] += 9 + length
    answered = [s for s in spans if s.error_class != "CLIENT_ERROR" or s.response_code is not None]  # not the cancelled one
    assert [s.request_bytes for s in answered] == [written[int(s.attributes["http2.stream_id"])] for s in answered]


def test_grpc_state_survives_a_checkpoint_after_every_event(grpc_recording):
    relay, port, _ = grpc_recording
    (connection,) = relay.connections()
    _, whole = _assemble(connection, port)
    _, restored = _assemble(connection, port, state_round_trip=True)
    assert [(s.request_resource, s.response_code, s.error_class, s.attributes) for s in restored] == [
        (s.request_resource, s.response_code, s.error_class, s.attributes) for s in whole]


def test_a_capture_that_starts_mid_connection_still_gives_the_later_calls_flagged_partial(grpc_recording):
    relay, port, _ = grpc_recording
    (connection,) = relay.connections()
    # from the client's recv that opens stream 11 (the call after Chat): the entries the peers' tables got before are unknown
    skip = next(i for i, (d, data) in enumerate(connection) if d == "c2s" and frame_header(data)[1:] == (HEADERS, frame_header(data)[2], 11))
    assert detect("TCP", connection[skip][1], 0) is HTTP2
    assembler, spans = _assemble(connection, port, skip=skip)
    assert assembler.counters.malformed == 0
    later = [s for s in spans if int(s.attributes["http2.stream_id"]) >= 11]
    assert [int(s.attributes["http2.stream_id"]) for s in later] == [11, 13, 15, 17, 19]
    assert all(s.request_type == "POST" for s in later)  # :method POST is in the static table
    assert any(s.attributes.get("http2.headers") == "partial" for s in later)


def test_http2_frames_are_not_read_as_kafka_or_mysql(grpc_recording):
    """The Beam gRPC channel between Flink's JVM and its Python worker (ephemeral ports) became Kafka Produce spans:
    HTTP/2 claims its frames from the connection's start or from any frame boundary mid-connection."""
    relay, port, _ = grpc_recording
    (connection,) = relay.connections()
    assert all(detect("TCP", data, port) is HTTP2 for _, data in connection if len(data) >= 9)
