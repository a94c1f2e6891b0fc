"""The eBPF agent against real traffic, as root: events are read back from Kafka and checked
against the bytes this test sent. Needs root, BTF and the local stack (CI has all three)."""

import contextlib
import http.client
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from schemas.catalog import AGENT_STATS, SOCKET_DATA, SOCKET_LIFECYCLE
from schemas.serde import AvroDeserializer
from tests.kafka_helpers import read_until_idle
from tests.recording import free_port, start_dnsmasq

REPO = Path(__file__).resolve().parents[2]
SECRET = b"c2VjcmV0LXBhc3N3b3Jk"  # base64("secret-password")
REQ_CHAIN = b"GET /chain HTTP/1.1\r\nHost: front\r\nAuthorization: Basic " + SECRET + b"\r\n\r\n"
REQ_PLAIN = b"GET /plain HTTP/1.1\r\nHost: front\r\nX-Request-Id: r-2\r\n\r\n"
# A DNS query for example.test A, id 0x1234, recursion desired (RFC 1035 layout, written by hand).
DNS_QUERY = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x04test\x00" + struct.pack(">HH", 1, 1)
REDIS_PING = b"*1\r\n$4\r\nPING\r\n"


class Downstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"pong"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def front_handler(downstream_port):
    class Front(Downstream):
        def do_GET(self):
            if self.path == "/chain":  # the call made while serving: the thread trace id must link it
                conn = http.client.HTTPConnection("127.0.0.1", downstream_port, timeout=5)
                conn.request("GET", "/pong")
                conn.getresponse().read()
                conn.close()
            super().do_GET()

    return Front


def _serve(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _start_agent(settings, extra_env=None, raw=False):
    """`tracetap agent ebpf`, in-collector (its default) or with `--raw` (every syscall's data to raw.socket-data)."""
    env = dict(os.environ, TRACETAP_TOPICS__PREFIX=settings.topics.prefix, TRACETAP_AGENT__STATS_INTERVAL_S="2", **(extra_env or {}))
    agent = subprocess.Popen([sys.executable, "-m", "cli.main", "agent", "ebpf", "--duration", "120", *(["--raw"] if raw else [])], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = agent.stdout.readline()  # blocks until the program is loaded, or the agent exits
    if "capturing" not in ready:
        agent.kill()
        raise AssertionError(f"agent did not start: {ready!r} {agent.stderr.read()[-2000:]}")
    return agent


@contextlib.contextmanager
def running_agent(settings, extra_env=None, raw=False):
    """The agent, capturing while the block runs; then stopped as Ctrl-C stops it (what it holds goes out, exit 0),
    or killed if the block failed."""
    agent = _start_agent(settings, extra_env, raw)
    try:
        yield agent
        agent.send_signal(signal.SIGINT)
        _, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, err[-2000:]
    finally:
        if agent.poll() is None:
            agent.kill()


@pytest.fixture(scope="module")
def captured(own_topics, registry):
    settings = own_topics
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    downstream = _serve(Downstream)
    front = _serve(front_handler(downstream.server_address[1]))
    agent = _start_agent(settings, raw=True)
    try:
        traffic = _generate_traffic(front.server_address[1], redis_port)
        time.sleep(1.0)
        agent.send_signal(signal.SIGINT)
        out, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, err[-2000:]
    finally:
        if agent.poll() is None:
            agent.kill()
        redis.terminate()
        front.shutdown()
        downstream.shutdown()
    decode = AvroDeserializer(registry)
    pid = os.getpid()
    data = [decode(m.value()) for m in read_until_idle(settings, SOCKET_DATA.full_name(settings.topics.prefix))]
    lifecycle = [decode(m.value()) for m in read_until_idle(settings, SOCKET_LIFECYCLE.full_name(settings.topics.prefix))]
    traffic.update(front_port=front.server_address[1], downstream_port=downstream.server_address[1], redis_port=redis_port,
                   data=[r for r in data if r["pid"] == pid], redis_data=[r for r in data if redis_port in (r["remote_port"], r["local_port"])],
                   dns_data=[r for r in data if traffic["dns_port"] in (r["remote_port"], r["local_port"])],
                   stats=[decode(m.value()) for m in read_until_idle(settings, AGENT_STATS.full_name(settings.topics.prefix))],
                   lifecycle=lifecycle, agent_summary=out, agent_pid=agent.pid, all_pids={r["pid"] for r in data})
    return traffic


def _generate_traffic(front_port, redis_port):
    client = socket.create_connection(("127.0.0.1", front_port))
    client_port = client.getsockname()[1]
    for request in (REQ_CHAIN, REQ_PLAIN):
        client.sendall(request)
        _read_http_response(client)
    client.close()

    dnsmasq, dns_port = start_dnsmasq("--address=/example.test/10.1.2.3")
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # unconnected: the peer comes from sendto's argument
    resolver.settimeout(0.5)
    answer = None
    for _ in range(20):  # a lost datagram is sent again
        resolver.sendto(DNS_QUERY, ("127.0.0.1", dns_port))
        try:
            answer, _ = resolver.recvfrom(512)
            break
        except TimeoutError:
            continue
    dnsmasq.terminate()
    dnsmasq.wait(10)
    assert answer is not None and answer[:2] == DNS_QUERY[:2] and answer.endswith(bytes([10, 1, 2, 3]))
    dns_client_port = resolver.getsockname()[1]
    resolver.close()

    for _ in range(50):
        try:
            redis = socket.create_connection(("127.0.0.1", redis_port))
            break
        except ConnectionRefusedError:
            time.sleep(0.1)
    redis.sendall(REDIS_PING)
    assert redis.recv(64) == b"+PONG\r\n"
    redis.close()

    refused_port = free_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", refused_port))
    return {"client_port": client_port, "dns_port": dns_port, "dns_client_port": dns_client_port, "refused_port": refused_port}


def _read_http_response(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int([line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(body) < length:
        body += sock.recv(4096)


def _events(captured, **match):
    return [r for r in captured["data"] if all(r[k] == v for k, v in match.items())]


def test_client_requests_carry_the_sent_bytes_tuple_and_role(captured):
    sent = _events(captured, local_port=captured["client_port"], direction="EGRESS")
    assert [r["bytes"] for r in sent] == [len(REQ_CHAIN), len(REQ_PLAIN)]
    for r in sent:
        assert (r["role"], r["l4_protocol"], r["local_ip"], r["remote_ip"], r["remote_port"]) == (
            "CLIENT", "TCP", "127.0.0.1", "127.0.0.1", captured["front_port"])
    assert sent[1]["payload"] == REQ_PLAIN


def test_the_authorization_header_is_masked_before_it_leaves_the_node(captured):
    sent = _events(captured, local_port=captured["client_port"], direction="EGRESS")[0]
    assert SECRET not in sent["payload"]
    assert sent["payload"] == REQ_CHAIN.replace(SECRET, b"*" * len(SECRET))


def test_server_side_sees_the_same_bytes_as_server_ingress(captured):
    received = _events(captured, local_port=captured["front_port"], remote_port=captured["client_port"], direction="INGRESS")
    assert [r["role"] for r in received] == ["SERVER", "SERVER"]
    assert received[1]["payload"] == REQ_PLAIN


def test_tcp_sequence_numbers_advance_by_the_bytes_written(captured):
    sent = _events(captured, local_port=captured["client_port"], direction="EGRESS")
    assert (sent[1]["tcp_seq"] - sent[0]["tcp_seq"]) % 2**32 == len(REQ_CHAIN)
    received = _events(captured, local_port=captured["front_port"], remote_port=captured["client_port"], direction="INGRESS")
    assert [r["tcp_seq"] for r in received] == [r["tcp_seq"] for r in sent]  # both ends agree on the same bytes


def test_the_thread_trace_id_links_a_request_to_the_call_made_while_serving_it(captured):
    inbound = _events(captured, local_port=captured["front_port"], remote_port=captured["client_port"], direction="INGRESS")
    outbound = _events(captured, remote_port=captured["downstream_port"], direction="EGRESS", role="CLIENT")
    assert len(outbound) == 1
    assert inbound[0]["syscall_trace_id"] is not None
    assert outbound[0]["tid"] == inbound[0]["tid"]
    assert outbound[0]["syscall_trace_id"] == inbound[0]["syscall_trace_id"]
    assert inbound[1]["syscall_trace_id"] not in (None, inbound[0]["syscall_trace_id"])  # the next request starts a new trace
    downstream_in = _events(captured, local_port=captured["downstream_port"], direction="INGRESS")
    assert downstream_in[0]["syscall_trace_id"] not in (None, inbound[0]["syscall_trace_id"])


def test_unconnected_udp_takes_the_peer_from_the_syscall(captured):
    query = _events(captured, local_port=captured["dns_client_port"], direction="EGRESS")[-1]
    assert (query["l4_protocol"], query["syscall"], query["remote_port"], query["payload"]) == (
        "UDP", "SENDTO", captured["dns_port"], DNS_QUERY)
    assert query["tcp_seq"] is None
    answer = _events(captured, local_port=captured["dns_client_port"], direction="INGRESS")[-1]
    assert (answer["remote_port"], answer["payload"][:2]) == (captured["dns_port"], DNS_QUERY[:2])


def test_a_real_dns_server_is_seen_receiving_the_query_and_answering(captured):
    server = [r for r in captured["dns_data"] if r["comm"] == "dnsmasq"]
    received = [r for r in server if r["direction"] == "INGRESS" and r["payload"] == DNS_QUERY]
    assert received and received[-1]["remote_port"] == captured["dns_client_port"]  # from recvmsg's msg_name
    assert any(r["direction"] == "EGRESS" and r["payload"][:2] == DNS_QUERY[:2] for r in server)


def test_a_real_redis_server_is_seen_from_both_sides(captured):
    redis = captured["redis_data"]
    assert any(r["direction"] == "EGRESS" and r["remote_port"] == captured["redis_port"] and r["payload"] == REDIS_PING for r in redis)
    server_side = [r for r in redis if r["comm"].startswith("redis") and r["local_port"] == captured["redis_port"]]
    assert any(r["direction"] == "INGRESS" and r["payload"] == REDIS_PING for r in server_side)
    assert any(r["direction"] == "EGRESS" and r["payload"] == b"+PONG\r\n" for r in server_side)


def test_lifecycle_has_connect_accept_and_close(captured):
    client_port, front_port = captured["client_port"], captured["front_port"]
    kinds = {(r["kind"], r["local_port"], r["remote_port"]) for r in captured["lifecycle"]}
    assert ("CONNECT", client_port, front_port) in kinds
    assert ("ACCEPT", front_port, client_port) in kinds
    assert ("CLOSE", client_port, front_port) in kinds
    accept = next(r for r in captured["lifecycle"] if r["kind"] == "ACCEPT" and r["remote_port"] == client_port)
    assert (accept["pid"], accept["role"]) == (os.getpid(), "SERVER")


def test_a_refused_connect_is_a_failed_connect_with_its_errno(captured):
    failed = [r for r in captured["lifecycle"] if r["kind"] == "CONNECT_FAILED" and r["remote_port"] == captured["refused_port"]]
    assert len(failed) == 1
    assert (failed[0]["error_name"], failed[0]["error_code"], failed[0]["pid"]) == ("ECONNREFUSED", 111, os.getpid())


def test_the_agent_accounts_for_everything_it_captured(captured):
    totals = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", captured["agent_summary"].splitlines()[-1])}
    drops = sum(totals.get(k, 0) for k in ("queue_overflow", "kafka_undelivered", "undelivered_at_exit", "invalid_records"))
    assert totals["offered"] > 0
    assert totals["offered"] == totals["delivered"] + drops


def test_agent_stats_records_add_up_to_the_run(captured):
    totals = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", captured["agent_summary"].splitlines()[-1])}
    assert {r["agent"] for r in captured["stats"]} == {"ebpf"}
    assert sum(r["counters"]["offered"] for r in captured["stats"]) == totals["offered"]
    assert all(r["interval_ns"] > 0 and "buffered" in r["counters"] for r in captured["stats"])


def test_the_agent_never_captures_its_own_traffic(captured):
    assert captured["agent_pid"] not in captured["all_pids"]
    assert captured["all_pids"]  # yet it captured others
