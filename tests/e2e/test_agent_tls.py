"""TLS through the eBPF agent's OpenSSL probes, on real traffic: curl over HTTPS (TLS 1.3 and 1.2) to nginx with a
certificate the test makes, and Python's `ssl` module at both ends of a keep-alive connection (several requests;
CPython calls SSL_read_ex/SSL_write_ex, curl and nginx SSL_read/SSL_write). In-collector, the spans are counted
exactly at both ends; with --raw, the socket data shows only plaintext for those sockets, and no bearer token. Between
two network namespaces, with the packet agent at both NICs, a TLS request's four-point path joins its process spans
(plaintext) with its NIC spans (TLS records) by the sequence number of its first ciphertext byte."""

import http.client
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from schemas.catalog import AGENT_STATS, NODE_SPANS, SOCKET_DATA
from schemas.serde import AvroDeserializer
from tests import servers
from tests.certs import TestCA
from tests.e2e.test_ebpf_agent import running_agent
from tests.e2e.test_packet_agent import _start_agent as _start_packet_agent
from tests.kafka_helpers import read_until_idle
from tests.pods import ns, veth_pods, wait_for_port
from tracetap.model import Span
from tracetap.paths import PathJoiner

TOKEN = "tls-canary-9f3e2d1c0b"  # a bearer token sent inside TLS: masked before it leaves the node
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CURL = [("/index.html", 200, None, "--tlsv1.3"), ("/missing", 404, "CLIENT_ERROR", "--tls-max"), ("/fail", 503, "SERVER_ERROR", "--tlsv1.3")]
PYTHON = [("GET", "/a", 200, None), ("POST", "/b", 201, None), ("GET", "/c", 500, "SERVER_ERROR")]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every request of the client on one connection

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        code = next(code for _, path, code, _ in PYTHON if path == self.path)
        body = b"tls says hi\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    os.chmod(directory, 0o755)  # nginx's worker reads the certificate as www-data
    ca = TestCA(directory)
    issued = ca.issue("server")
    os.chmod(issued.key_file, 0o644)
    return ca, issued


@pytest.fixture(scope="module")
def tls_servers(pki):
    ca, issued = pki
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.cert_file, issued.key_file)
    python = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    python.socket = context.wrap_socket(python.socket, server_side=True)
    threading.Thread(target=python.serve_forever, daemon=True).start()
    with servers.nginx_https(str(issued.cert_file), str(issued.key_file)) as nginx_port:
        yield {"ca": ca, "nginx": nginx_port, "python": python.server_address[1]}
    python.shutdown()


def _traffic(servers_):
    for path, code, _, version in CURL:
        out = subprocess.run(["curl", "-sS", "--cacert", str(servers_["ca"].ca_file), version, *(["1.2"] if version == "--tls-max" else []),
                              "-H", f"Authorization: Bearer {TOKEN}", "-H", f"traceparent: {TRACEPARENT}", "-o", "/dev/null",
                              "-w", "%{http_code}", f"https://127.0.0.1:{servers_['nginx']}{path}"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout == str(code), out.stderr
    context = ssl.create_default_context(cafile=str(servers_["ca"].ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", servers_["python"], context=context, timeout=10)
    for method, path, code, _ in PYTHON:
        conn.request(method, path, body=b"x=1" if method == "POST" else None, headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        response.read()
        assert response.status == code
    conn.close()


@pytest.fixture(scope="module")
def spans(own_topics, registry, tls_servers):
    with running_agent(own_topics):
        _traffic(tls_servers)
    decode = AvroDeserializer(registry)
    records = [decode(m.value()) for m in read_until_idle(own_topics, NODE_SPANS.full_name(own_topics.topics.prefix))]
    return {name: [r for r in records if r["server_port"] == tls_servers[name]] for name in ("nginx", "python")}


@pytest.fixture(scope="module")
def raw(own_topics, registry, tls_servers):
    with running_agent(own_topics, raw=True):
        _traffic(tls_servers)
    decode = AvroDeserializer(registry)
    prefix = own_topics.topics.prefix
    ports = {tls_servers["nginx"], tls_servers["python"]}
    data = [decode(m.value()) for m in read_until_idle(own_topics, SOCKET_DATA.full_name(prefix))]
    stats = [decode(m.value()) for m in read_until_idle(own_topics, AGENT_STATS.full_name(prefix))]
    return {"data": [r for r in data if ports & {r["local_port"], r["remote_port"]}], "stats": stats}


def _views(records):
    return Counter((r["protocol"], r["tap_side"], r["request_type"], r["request_resource"], r["response_code"], r["error_class"], r["tls"])
                   for r in records)


def test_each_curl_request_over_https_is_one_http_span_at_curl_and_one_at_nginx(spans):
    assert _views(spans["nginx"]) == Counter({("HTTP", side, "GET", path, code, error, True): 1
                                              for path, code, error, _ in CURL for side in ("CLIENT_PROCESS", "SERVER_PROCESS")})
    assert all(r["traceparent"] == TRACEPARENT for r in spans["nginx"])


def test_python_ssl_keep_alive_requests_are_one_span_each_at_both_ends(spans):
    assert _views(spans["python"]) == Counter({("HTTP", side, method, path, code, error, True): 1
                                               for method, path, code, error in PYTHON for side in ("CLIENT_PROCESS", "SERVER_PROCESS")})
    assert len({r["client_port"] for r in spans["python"]}) == 1  # one connection
    client = sorted(r["req_tcp_seq"] for r in spans["python"] if r["tap_side"] == "CLIENT_PROCESS")
    server = sorted(r["req_tcp_seq"] for r in spans["python"] if r["tap_side"] == "SERVER_PROCESS")
    assert client == server and None not in client  # the ciphertext's sequence numbers, as the wire (and a NIC) has them


def test_tls_sockets_ship_plaintext_and_no_ciphertext(raw):
    data = raw["data"]
    plaintext = [r for r in data if r["syscall"] in ("SSL_READ", "SSL_WRITE")]
    assert {r["comm"] for r in plaintext} >= {"curl", "nginx"}
    assert len({r["socket_id"] for r in plaintext}) == 2 * (len(CURL) + 1)  # both ends of every connection
    streams: dict[tuple, list[bytes]] = {}
    for r in plaintext:
        if r["payload"]:
            streams.setdefault((r["socket_id"], r["direction"]), []).append(r["payload"])
    assert all(payloads[0][:4] in (b"GET ", b"POST", b"HTTP") for payloads in streams.values())  # plaintext from its start
    ciphertext = [r for r in data if r["syscall"] not in ("SSL_READ", "SSL_WRITE") and r["payload"]]
    assert ciphertext == []  # the handshakes' bytes went out as counts, the records inside SSL calls not at all
    assert sum(s["counters"].get("tls_ciphertext_events", 0) for s in raw["stats"]) > 0


def test_a_bearer_token_inside_tls_is_masked(raw):
    payloads = b"".join(r["payload"] for r in raw["data"])
    assert b"Authorization: Bearer " in payloads
    assert TOKEN.encode() not in payloads and TOKEN[:8].encode() not in payloads



SERVER_IP, CLIENT_IP, PORT = "10.231.9.2", "10.231.9.1", 8443
_POD_SERVER = r"""
import ssl, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"pod says hi\n"
        self.send_response(200 if self.path == "/ok" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server = HTTPServer((sys.argv[1], 8443), H)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""
PATHS = [("/ok", 200, "--tlsv1.3"), ("/missing", 404, "--tls-max")]


@pytest.fixture(scope="module")
def four_points(own_topics, registry, pki):
    """A client pod and a server pod joined by a veth pair; the eBPF agent and the packet agent (both taps) capture
    curl's HTTPS requests to a Python ssl server; their spans are joined as the stream jobs join them."""
    ca, issued = pki
    with veth_pods(CLIENT_IP, SERVER_IP, "t") as pods:
        client, server = pods["client"], pods["server"]
        pod_server = subprocess.Popen(["ip", "netns", "exec", server, sys.executable, "-c", _POD_SERVER, SERVER_IP,
                                       str(issued.cert_file), str(issued.key_file)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        packets = None
        try:
            wait_for_port(server, PORT)
            taps = f"{pods['veth_c']}@{client}=client-nic/frontend,{pods['veth_s']}@{server}=server-nic/backend"
            packets = _start_packet_agent(own_topics, {"TRACETAP_PACKETS__TAPS": taps}, "--duration", "120")
            with running_agent(own_topics):
                time.sleep(0.5)
                for path, code, version in PATHS:
                    out = ns(client, "curl", "-sS", "--cacert", str(ca.ca_file), version, *(["1.2"] if version == "--tls-max" else []),
                             "--resolve", f"localhost:{PORT}:{SERVER_IP}",  # the certificate names localhost
                             "-o", "/dev/null", "-w", "%{http_code}", f"https://localhost:{PORT}{path}", timeout=30)
                    assert out.stdout == str(code), out.stderr
                time.sleep(1.0)
            packets.send_signal(signal.SIGINT)
            _, err = packets.communicate(timeout=60)
            assert packets.returncode == 0, err[-2000:]
        finally:
            for process in (pod_server, packets):
                if process is not None and process.poll() is None:
                    process.kill()
    decode = AvroDeserializer(registry)
    spans = [Span.from_record(decode(m.value())) for m in read_until_idle(own_topics, NODE_SPANS.full_name(own_topics.topics.prefix))]
    spans = [span for span in spans if span.server_ip == SERVER_IP]
    joiner = PathJoiner()
    paths = [path for span in sorted(spans, key=lambda s: s.start_ns) for path in joiner.add(span)]
    return {"spans": spans, "paths": paths + joiner.expire(2**62)}


def test_a_tls_request_has_its_nic_points_in_its_four_point_path(four_points):
    sides = Counter((str(s.tap_side), s.protocol, s.tls) for s in four_points["spans"])
    assert sides == Counter({("CLIENT_PROCESS", "HTTP", True): 2, ("SERVER_PROCESS", "HTTP", True): 2,
                             ("CLIENT_NIC", "TLS", True): 2, ("SERVER_NIC", "TLS", True): 2})
    complete = [p for p in four_points["paths"] if p["complete"]]
    assert sorted((p["protocol"], p["request_resource"], p["response_code"]) for p in complete) == \
        [("HTTP", "/missing", 404), ("HTTP", "/ok", 200)]
    for path in complete:
        assert path["points_seen"] == ["CLIENT_PROCESS", "CLIENT_NIC", "SERVER_NIC", "SERVER_PROCESS"]
        assert path["req_network_ns"] is not None and path["server_processing_ns"] is not None
