"""HTTP/2 and gRPC through the eBPF agent (in-collector, its default) on real traffic: curl with
--http2-prior-knowledge against nginx serving h2c, and grpcio's client against a grpcio server (unary, failing,
server-streaming, client-streaming and bidirectional calls). The spans on raw.spans are counted per protocol and
side against what the clients did, exactly."""

import subprocess
from collections import Counter

import grpc
import pytest

from schemas.catalog import NODE_SPANS
from schemas.serde import AvroDeserializer
from tests import servers
from tests.e2e.test_ebpf_agent import running_agent
from tests.kafka_helpers import read_until_idle

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CURL = [("/index.html", 200, None), ("/missing", 404, "CLIENT_ERROR"), ("/fail", 503, "SERVER_ERROR")]
GRPC = [("/demo.Echo/Say", 0, None), ("/demo.Echo/Say", 5, "CLIENT_ERROR"), ("/demo.Echo/Count", 0, None),
        ("/demo.Echo/Sum", 0, None), ("/demo.Echo/Chat", 0, None)]


@pytest.fixture(scope="module")
def spans(own_topics, registry):
    settings = own_topics
    with servers.nginx_h2c() as nginx_port, servers.grpc_echo() as grpc_port:
        with running_agent(settings):
            for path, code, _ in CURL:
                out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-H", f"traceparent: {TRACEPARENT}", "-o", "/dev/null",
                                      "-w", "%{http_code}", f"http://127.0.0.1:{nginx_port}{path}"], capture_output=True, text=True, timeout=30)
                assert out.stdout == str(code), out.stderr
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                say = channel.unary_unary("/demo.Echo/Say")
                assert say(b"a", metadata=(("traceparent", TRACEPARENT),), timeout=10) == b"hello a"
                with pytest.raises(grpc.RpcError) as failed:
                    say(b"missing", timeout=10)
                assert failed.value.code() is grpc.StatusCode.NOT_FOUND
                assert list(channel.unary_stream("/demo.Echo/Count")(b"3", timeout=10)) == [b"0", b"1", b"2"]
                assert channel.stream_unary("/demo.Echo/Sum")(iter([b"1", b"2"]), timeout=10) == b"3"
                assert list(channel.stream_stream("/demo.Echo/Chat")(iter([b"x", b"y"]), timeout=10)) == [b"X", b"Y"]
    decode = AvroDeserializer(registry)
    records = [decode(m.value()) for m in read_until_idle(settings, NODE_SPANS.full_name(settings.topics.prefix))]
    return {"nginx": [r for r in records if r["server_port"] == nginx_port], "grpc": [r for r in records if r["server_port"] == grpc_port]}


def _views(records):
    return Counter((r["protocol"], r["tap_side"], r["request_resource"], r["response_code"], r["error_class"]) for r in records)


def test_each_curl_request_is_one_http2_span_at_the_client_and_one_at_nginx(spans):
    assert _views(spans["nginx"]) == Counter(
        {("HTTP2", side, path, code, error): 1 for path, code, error in CURL for side in ("CLIENT_PROCESS", "SERVER_PROCESS")})
    assert all(r["request_type"] == "GET" and r["traceparent"] == TRACEPARENT for r in spans["nginx"])


def test_each_grpc_call_is_one_grpc_span_at_each_end_with_its_status(spans):
    assert _views(spans["grpc"]) == Counter(
        {("GRPC", side, path, code, error): 1 for path, code, error in GRPC for side in ("CLIENT_PROCESS", "SERVER_PROCESS")})
    by_side = {}
    for r in spans["grpc"]:
        by_side.setdefault(r["tap_side"], []).append(r)
    for side, records in by_side.items():  # both ends of a call see the same stream, and the same request bytes
        said = [r for r in records if r["request_resource"] == "/demo.Echo/Say" and r["response_code"] == 0]
        assert said[0]["traceparent"] == TRACEPARENT, side
        assert said[0]["attributes"]["grpc.service"] == "demo.Echo" and said[0]["attributes"]["grpc.method"] == "Say"
    client = sorted(int(r["attributes"]["http2.stream_id"]) for r in by_side["CLIENT_PROCESS"])
    server = sorted(int(r["attributes"]["http2.stream_id"]) for r in by_side["SERVER_PROCESS"])
    assert client == server == [1, 3, 5, 7, 9]
