"""The L7 parsers on bytes real clients and servers wrote (http.client and http.server, redis-py and
redis-server, dnspython and dnsmasq), recorded by the test through a relay. Expected values are what the
test asked the client to do."""

import http.client
import http.server
import shutil
import socket
import subprocess
import threading
import time

import dns.message
import dns.query
import dns.rcode
import pytest
import redis

from tests.recording import RecordingRelay, free_port, start_dnsmasq, wait_for_port
from tracetap.protocols import detect
from tracetap.protocols.base import ErrorClass, Status
from tracetap.protocols.dns import DNS_TCP, DNS_UDP
from tracetap.protocols.http1 import HTTP1
from tracetap.protocols.redis import REDIS



def _messages(parse, stream):
    """Parse a recorded stream message after message, as the assembler does."""
    out, offset = [], 0
    while offset < len(stream):
        result = parse(stream[offset:], False)
        assert result.status is Status.MESSAGE, (result, stream[offset:offset + 80])
        out.append(result.message)
        assert result.message.size, "every recorded message has a known size"
        offset += result.message.size
    assert offset == len(stream)
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self):
        if self.path.startswith("/boom"):
            self.send_response(503)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"down")
        elif self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            body = b"x" * 3000
            self.send_response(200 if not self.path.startswith("/missing") else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_recording():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    relay = RecordingRelay(server.server_address[1])
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=5)
    for method, path, body, headers in [
        ("GET", "/orders/42?verbose=1", None, {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}),
        ("POST", "/orders", b'{"item": 7}', {"X-Request-ID": "req-1"}),
        ("GET", "/chunked", None, {}),
        ("GET", "/missing", None, {}),
        ("GET", "/boom", None, {}),
    ]:
        conn.request(method, path, body=body, headers=headers)
        conn.getresponse().read()
    conn.close()
    time.sleep(0.2)
    relay.close()
    server.shutdown()
    return relay


def test_http_requests_over_keepalive_parse_one_after_another(http_recording):
    stream = http_recording.stream("c2s")
    assert detect("TCP", stream, 8080) is HTTP1
    requests = _messages(HTTP1.parse_request, stream)
    assert [(m.request_type, m.request_resource) for m in requests] == [
        ("GET", "/orders/42"), ("POST", "/orders"), ("GET", "/chunked"), ("GET", "/missing"), ("GET", "/boom")]
    assert requests[0].trace_headers == (("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),)
    assert requests[1].trace_headers == (("x-request-id", "req-1"),)
    assert all(m.request_domain and m.request_domain.startswith("127.0.0.1:") for m in requests)


def test_http_responses_with_length_chunked_and_errors_parse_one_after_another(http_recording):
    responses = _messages(HTTP1.parse_response, http_recording.stream("s2c"))
    assert [(m.response_code, m.error_class) for m in responses] == [
        (200, None), (201, None), (200, None), (404, ErrorClass.CLIENT_ERROR), (503, ErrorClass.SERVER_ERROR)]


def test_pipelined_requests_in_one_buffer_each_end_where_the_next_begins(http_recording):
    one = http_recording.stream("c2s")
    first_two = _messages(HTTP1.parse_request, one)[:2]
    assert sum(m.size for m in first_two) < len(one)  # the third request begins right after


def test_a_request_cut_by_the_capture_still_gives_its_method_and_path(http_recording):
    stream = http_recording.stream("c2s")
    result = HTTP1.parse_request(stream[:30], final=True)
    assert result.ok and (result.message.request_type, result.message.request_resource, result.message.size) == ("GET", "/orders/42", None)
    assert HTTP1.parse_request(stream[:30], final=False).status is Status.NEED_MORE


@pytest.fixture(scope="module")
def redis_recording():
    assert shutil.which("redis-server"), "redis-server is installed by make setup"
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        relay = RecordingRelay(port)
        client = redis.Redis(port=relay.port, protocol=3)
        client.set("user:1", "alice")
        client.get("user:1")
        client.get("user:missing")
        client.hset("h", mapping={"a": "1", "b": "2"})
        client.hgetall("h")
        pipe = client.pipeline(transaction=False)
        for _ in range(3):
            pipe.incr("counter")
        pipe.execute()
        with pytest.raises(redis.ResponseError):
            client.incr("user:1")  # WRONGTYPE-ish: not an integer
        client.close()
        time.sleep(0.2)
        relay.close()
        yield relay
    finally:
        server.terminate()
        server.wait(10)


def test_redis_commands_and_pipelines_parse_one_after_another(redis_recording):
    stream = redis_recording.stream("c2s")
    assert detect("TCP", stream, 16379) is REDIS
    commands = [(m.request_type, m.request_resource) for m in _messages(REDIS.parse_request, stream)]
    assert commands[0][0] == "HELLO" and commands[0][1] is None  # RESP3 handshake; HELLO's arguments are never kept
    assert ("SET", "user:1") in commands and ("GET", "user:missing") in commands and ("HGETALL", "h") in commands
    assert commands[-4:] == [("INCRBY", "counter")] * 3 + [("INCRBY", "user:1")]  # redis-py sends INCR as INCRBY


def test_redis_replies_of_every_type_pair_in_order_and_errors_carry_their_text(redis_recording):
    requests = _messages(REDIS.parse_request, redis_recording.stream("c2s"))
    replies = _messages(REDIS.parse_response, redis_recording.stream("s2c"))
    assert len(replies) == len(requests)
    failed = [(q.request_type, q.request_resource) for q, r in zip(requests, replies) if r.error_class]
    # redis-py 8 probes CLIENT subcommands (SETINFO, MAINT_NOTIFICATIONS) that redis-server 7.0 refuses; then our INCRBY on a string
    assert all(command == "CLIENT" for command, _ in failed[:-1]) and failed[-1] == ("INCRBY", "user:1")
    assert replies[-1].error_class is ErrorClass.SERVER_ERROR and "not an integer" in replies[-1].response_message
    assert replies[0].error_class is None and replies[0].size > 50  # HELLO 3's map reply


@pytest.fixture(scope="module")
def dnsmasq_port():
    server, port = start_dnsmasq("--local=/tracetap.test/", "--address=/svc.tracetap.test/10.1.2.3")
    yield port
    server.terminate()
    server.wait(10)


def _udp_exchange(port, name, rdtype):
    query = dns.message.make_query(name, rdtype, id=0x1234).to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(query, ("127.0.0.1", port))
        return query, s.recv(4096)


def test_dns_over_udp_queries_and_answers(dnsmasq_port):
    query, answer = _udp_exchange(dnsmasq_port, "svc.tracetap.test", "A")
    assert detect("UDP", query, 53) is DNS_UDP
    q = DNS_UDP.parse_request(query, True).message
    a = DNS_UDP.parse_response(answer, True).message
    assert (q.request_type, q.request_domain, q.pair_key, q.size) == ("A", "svc.tracetap.test", 0x1234, len(query))
    assert (a.response_code, a.response_message, a.error_class, a.pair_key) == (0, "NOERROR", None, 0x1234)
    assert ("dns.answers", "1") in a.attributes
    _, missing = _udp_exchange(dnsmasq_port, "nothing.tracetap.test", "AAAA")
    m = DNS_UDP.parse_response(missing, True).message
    assert (m.request_type, m.response_message, m.error_class) == ("AAAA", "NXDOMAIN", ErrorClass.CLIENT_ERROR)


def test_dns_over_tcp_uses_the_length_prefix(dnsmasq_port):
    relay = RecordingRelay(dnsmasq_port)
    dns.query.tcp(dns.message.make_query("svc.tracetap.test", "A"), "127.0.0.1", port=relay.port, timeout=5)
    time.sleep(0.2)
    relay.close()
    q = _messages(DNS_TCP.parse_request, relay.stream("c2s"))
    a = _messages(DNS_TCP.parse_response, relay.stream("s2c"))
    assert [m.request_domain for m in q] == ["svc.tracetap.test"] and a[0].response_message == "NOERROR"
    assert q[0].pair_key == a[0].pair_key


def test_recorded_keepalive_traffic_assembles_into_one_span_per_request(http_recording):
    import re

    from tracetap.assembly import SocketAssembler
    from tracetap.model import SocketData

    assembler, spans, sent, t = SocketAssembler(), [], {"c2s": 0, "s2c": 0}, 1_000_000
    for direction, data in http_recording.chunks:
        t += 1000
        event = SocketData("node", t, t + 10, 1, 1, "client", 7, direction == "c2s", len(data), "TCP", "127.0.0.1", 50000,
                           "127.0.0.1", 8080, "CLIENT", data[:1024], 5000 + sent[direction], None)
        sent[direction] += len(data)
        spans += assembler.add(event)
    spans += assembler.close(t + 1)
    c2s = http_recording.stream("c2s")
    starts = [m.start() for m in re.finditer(rb"(?:GET|POST) /", c2s)]  # where each request begins, found by text (no body has these)
    assert [(s.request_type, s.response_code) for s in spans] == [("GET", 200), ("POST", 201), ("GET", 200), ("GET", 404), ("GET", 503)]
    assert [s.req_tcp_seq for s in spans] == [5000 + i for i in starts]
    assert all(s.end_ns > s.start_ns and not s.connection_closed for s in spans)
    assert spans[2].response_bytes is not None and assembler.counters.malformed == 0
