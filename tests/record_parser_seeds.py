"""Record the fuzz tests' seeds: conversations real clients and servers had through a relay (http.client and
http.server, redis-py and redis-server, dnspython and dnsmasq, psql/psycopg and postgres, the mariadb client
and mariadbd, librdkafka and the stack's broker, curl and Python's ssl against nginx over TLS), written to tests/parser_seeds.py as literal bytes.

Run by hand when a protocol is added (the servers are those `make setup` installs; Kafka is the running stack):
    PYTHONPATH=. .venv/bin/python tests/record_parser_seeds.py
"""

from __future__ import annotations

import glob
import http.client
import http.server
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.recording import BrokerRelay, RecordingRelay, free_port, start_dnsmasq, wait_for_port  # noqa: E402

OUT = Path(__file__).with_name("parser_seeds.py")
Conversation = list[tuple[bool, bytes]]  # (client to server, bytes of one recv)


def relayed(port: int, talk: Callable[[int], None]) -> list[Conversation]:
    relay = RecordingRelay(port)
    talk(relay.port)
    time.sleep(0.3)
    relay.close()
    conversations = [[(direction == "c2s", data) for direction, data in connection] for connection in relay.connections()]
    return sorted(conversations, key=lambda c: not any(to_server and data[4:6] in (b"\x00\x00", b"\x00\x01") for to_server, data in c))


# HTTP -------------------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        body = b"x" * 300
        self.send_response({"/missing": 404, "/boom": 503}.get(self.path, 200))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def record_http() -> list[Conversation]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def talk(port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for method, path, body, headers in [
            ("GET", "/orders/42?verbose=1", None, {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}),
            ("POST", "/orders", b'{"item": 7}', {"X-Request-ID": "req-1"}),
            ("GET", "/chunked", None, {}), ("GET", "/missing", None, {}), ("GET", "/boom", None, {})]:
            conn.request(method, path, body=body, headers=headers)
            conn.getresponse().read()
        conn.close()

    try:
        return relayed(server.server_address[1], talk)
    finally:
        server.shutdown()


# Redis ------------------------------------------------------------------------------------------------
@contextmanager
def server_process(args: list[str], port: int) -> Iterator[None]:
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield
    finally:
        process.terminate()
        process.wait(30)


def record_redis() -> list[Conversation]:
    import redis

    port = free_port()
    with server_process(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], port):
        def talk(relay_port: int) -> None:
            for protocol in (3, 2):
                client = redis.Redis(port=relay_port, protocol=protocol)
                client.set("user:1", "alice")
                client.get("user:1")
                client.hset("h", mapping={"a": "1", "b": "2"})
                client.hgetall("h")
                client.zadd("z", {"m": 1.5})
                client.zrange("z", 0, -1, withscores=True)
                pipe = client.pipeline(transaction=False)
                for _ in range(3):
                    pipe.incr("counter")
                pipe.execute()
                try:
                    client.incr("user:1")
                except redis.ResponseError:
                    pass
                client.close()
            with socket.create_connection(("127.0.0.1", relay_port)) as raw:  # an inline command, as redis-cli -x or telnet
                raw.sendall(b"PING\r\n")
                raw.recv(100)

        return relayed(port, talk)


# DNS --------------------------------------------------------------------------------------------------
def record_dns() -> tuple[list[Conversation], list[Conversation]]:
    import dns.message
    import dns.query

    server, port = start_dnsmasq("--local=/tracetap.test/", "--address=/svc.tracetap.test/10.1.2.3")
    try:
        udp = []
        for name, rdtype in (("svc.tracetap.test", "A"), ("nothing.tracetap.test", "AAAA"), ("svc.tracetap.test", "MX")):
            query = dns.message.make_query(name, rdtype, use_edns=rdtype == "MX").to_wire()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(query, ("127.0.0.1", port))
                udp.append([(True, query), (False, s.recv(4096))])
        tcp = relayed(port, lambda p: [dns.query.tcp(dns.message.make_query(n, "A"), "127.0.0.1", port=p, timeout=5)
                                       for n in ("svc.tracetap.test", "nothing.tracetap.test")])
    finally:
        server.terminate()
        server.wait(30)
    return udp, tcp


# PostgreSQL -------------------------------------------------------------------------------------------
def record_postgres() -> list[Conversation]:
    import psycopg

    bindir = os.path.dirname(sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))[-1])
    data = tempfile.mkdtemp(prefix="tracetap-seeds-pg-")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    subprocess.run([*as_postgres, f"{bindir}/initdb", "-D", data, "-U", "tracetap", "--auth=trust"], check=True, capture_output=True)
    port = free_port()
    try:
        with server_process([*as_postgres, f"{bindir}/postgres", "-D", data, "-p", str(port), "-k", data, "-c",
                             "listen_addresses=127.0.0.1"], port):
            time.sleep(0.5)

            def talk(relay_port: int) -> None:
                subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(relay_port), "-U", "tracetap", "-d", "postgres",
                                "-c", "CREATE TABLE orders (id int, owner text)", "-c", "INSERT INTO orders VALUES (42, 'alice')",
                                "-c", "SELECT owner FROM orders WHERE id = 42", "-c", "SELECT * FROM missing_table"],
                               env=dict(os.environ, PGSSLMODE="disable"), capture_output=True, timeout=30)
                with psycopg.connect(host="127.0.0.1", port=relay_port, user="tracetap", dbname="postgres", sslmode="disable") as conn:
                    conn.execute("SELECT owner FROM orders WHERE id = %s AND owner = %s", (42, "alice")).fetchall()
                    conn.execute("/* a comment */ SELECT generate_series(1, 20)").fetchall()

            return relayed(port, talk)
    finally:
        shutil.rmtree(data, ignore_errors=True)


# MySQL ------------------------------------------------------------------------------------------------
def record_mysql() -> list[Conversation]:
    data = tempfile.mkdtemp(prefix="tracetap-seeds-mysql-")
    subprocess.run(["mariadb-install-db", f"--datadir={data}", "--user=root", "--auth-root-authentication-method=normal",
                    "--skip-test-db"], check=True, capture_output=True)
    port = free_port()
    try:
        with server_process(["mariadbd", f"--datadir={data}", "--user=root", f"--port={port}", "--bind-address=127.0.0.1",
                             f"--socket={data}/mysqld.sock", "--skip-networking=0", f"--pid-file={data}/mysqld.pid"], port):
            script = ("CREATE DATABASE shop; USE shop; CREATE TABLE t (id INT, name VARCHAR(20)); "
                      "INSERT INTO t VALUES (1, 'a'), (2, 'b'); SELECT name FROM t WHERE id > 0; SELECT * FROM nope;")
            # interactive (under a pty), the client lists each table's fields (COM_FIELD_LIST) on connect; compressed
            session = ("SELECT REPEAT('x', 30000);\nSELECT * FROM nope;\nDELIMITER //\nSELECT 1; SELECT name FROM t //\n"
                       "DELIMITER ;\nexit\n")

            def talk(p: int) -> None:
                subprocess.run(["mariadb", "-h", "127.0.0.1", "-P", str(p), "-u", "root", "--force", "-e", script], capture_output=True,
                               timeout=30)
                subprocess.run(["script", "-qc", f"mariadb --compress --auto-rehash --force -h 127.0.0.1 -P {p} -u root shop", "/dev/null"],
                               input=session.encode(), capture_output=True, timeout=30)
            return relayed(port, talk)
    finally:
        shutil.rmtree(data, ignore_errors=True)


# Kafka ------------------------------------------------------------------------------------------------
def record_kafka() -> list[Conversation]:
    """librdkafka's requests and the broker's answers: Produce with trace headers (a gzip batch), a record over its
    topic's max.message.bytes, Metadata for a topic that does not exist, Fetch of records and of an offset out of
    range, and an ApiVersions version the broker does not know. Every connection goes through the relay; those that
    carry Produce or Fetch requests come first (the seeds keep the first few)."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    from cli.main import read_settings

    settings = read_settings(None, dict(os.environ))
    broker_port = int(settings.kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])
    topic, small = f"seeds-{uuid.uuid4().hex[:8]}", f"seeds-small-{uuid.uuid4().hex[:8]}"
    headers = [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), ("sw8", "1-YWJj-ZGVm-0-c2Vy-aW5z-L3A=-aDo5MDky")]

    def talk(port: int) -> None:
        config = {"bootstrap.servers": f"127.0.0.1:{port}", "client.id": "tracetap-seeds"}
        admin = AdminClient(config)
        admin.list_topics(topic=f"seeds-missing-{uuid.uuid4().hex[:8]}", timeout=10)  # UNKNOWN_TOPIC_OR_PARTITION
        new = [NewTopic(topic, 1, 1), NewTopic(small, 1, 1, config={"max.message.bytes": "1024"})]
        for future in admin.create_topics(new).values():
            future.result()
        producer = Producer(dict(config, **{"compression.type": "gzip", "linger.ms": 0, "retries": 0}))
        producer.produce(topic, b"hello", key=b"k", headers=headers)
        producer.flush(10)
        producer.produce(small, os.urandom(2000))  # MESSAGE_TOO_LARGE (random bytes: gzip does not shrink them)
        producer.flush(10)
        consumer = Consumer(dict(config, **{"group.id": "tracetap-seeds", "auto.offset.reset": "error", "enable.auto.commit": False}))
        consumer.assign([TopicPartition(topic, 0, 0)])
        consumer.consume(1, timeout=10)
        consumer.assign([TopicPartition(topic, 0, 1000)])  # OFFSET_OUT_OF_RANGE
        consumer.consume(1, timeout=3)
        consumer.close()
        with socket.create_connection(("127.0.0.1", port)) as raw:  # ApiVersions v5 (the broker knows up to v4): an error code
            body = struct.pack(">hhih", 18, 5, 4242, 4) + b"test" + b"\x00" + b"\x02t" + b"\x021" + b"\x00"
            raw.sendall(struct.pack(">i", len(body)) + body)
            size = struct.unpack(">i", raw.recv(4))[0]
            while size > 0:
                size -= len(raw.recv(size))
        for future in admin.delete_topics([topic, small], operation_timeout=30).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001 - the topic may not have been created; nothing else to clean
                pass

    relay = BrokerRelay(broker_port)
    talk(relay.port)
    time.sleep(0.3)
    relay.close()
    conversations = [[(direction == "c2s", data) for direction, data in connection] for connection in relay.connections()]
    return sorted(conversations, key=lambda c: not any(to_server and data[4:6] in (b"\x00\x00", b"\x00\x01") for to_server, data in c))


# HTTP/2 and gRPC --------------------------------------------------------------------------------------
def record_http2() -> list[Conversation]:
    """curl --http2-prior-knowledge against nginx (h2c), and grpcio's client against its server: a unary call with a
    trace header, a failing one, server and bidirectional streams."""
    import grpc

    from tests import servers

    with servers.nginx_h2c() as port:
        def curl(port: int) -> None:
            for path in ("/index.html", "/missing"):
                subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-H", "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                                "-o", "/dev/null", f"http://127.0.0.1:{port}{path}"], check=True, timeout=30)
        conversations = relayed(port, curl)
    with servers.grpc_echo() as port:
        def calls(port: int) -> None:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                say = channel.unary_unary("/demo.Echo/Say")
                say(b"a", metadata=(("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),), timeout=10)
                try:
                    say(b"missing", timeout=10)
                except grpc.RpcError:
                    pass
                list(channel.unary_stream("/demo.Echo/Count")(b"3", timeout=10))
                list(channel.stream_stream("/demo.Echo/Chat")(iter([b"x", b"y"]), timeout=10))
        conversations += relayed(port, calls)
    return conversations


def record_tls() -> list[Conversation]:
    """TLS ciphertext: curl (TLS 1.3, then 1.2) and Python's ssl (two requests on one connection) against nginx with
    a certificate made here; the relay sees the records only."""
    import ssl

    from tests import servers
    from tests.certs import TestCA

    directory = Path(tempfile.mkdtemp(prefix="tracetap-tls-"))
    os.chmod(directory, 0o755)
    ca = TestCA(directory)
    issued = ca.issue("server")
    os.chmod(issued.key_file, 0o644)
    with servers.nginx_https(str(issued.cert_file), str(issued.key_file)) as port:
        def talk(port: int) -> None:
            for version in ("--tlsv1.3", "--tls-max"):
                subprocess.run(["curl", "-s", "--cacert", str(ca.ca_file), version, *(["1.2"] if version == "--tls-max" else []),
                                "-o", "/dev/null", f"https://127.0.0.1:{port}/index.html"], check=True, timeout=30)
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=str(ca.ca_file)), timeout=10)
            for path in ("/index.html", "/missing"):
                conn.request("GET", path)
                conn.getresponse().read()
            conn.close()
        conversations = relayed(port, talk)
    shutil.rmtree(directory, ignore_errors=True)
    return conversations


# output -----------------------------------------------------------------------------------------------
def _literal(data: bytes, indent: str) -> str:
    pieces = [repr(data[i:i + 48]) for i in range(0, len(data), 48)] or ["b''"]
    return pieces[0] if len(pieces) == 1 else "(" + f"\n{indent} ".join(pieces) + ")"


MAX_CHUNKS = 40  # per conversation: the handshake and a few requests are what the fuzz tests mutate
MAX_CONVERSATIONS = 4


def write(conversations: dict[str, list[Conversation]]) -> None:
    lines = ['"""Conversations real clients and servers had, recorded by tests/record_parser_seeds.py (do not edit by hand):',
             'per protocol, connections as (client to server, bytes of one recv) in arrival order."""', "",
             "SEEDS: dict[str, list[list[tuple[bool, bytes]]]] = {"]
    for name, kept in conversations.items():
        lines.append(f"    {name!r}: [")
        for conversation in [c for c in kept if c][:MAX_CONVERSATIONS]:
            lines.append("        [")
            for to_server, data in conversation[:MAX_CHUNKS]:
                lines.append(f"            ({to_server}, {_literal(data, ' ' * 13)}),")
            lines.append("        ],")
        lines.append("    ],")
    lines.append("}")
    OUT.write_text("\n".join(lines) + "\n")


def main() -> None:
    """With protocol names as arguments (HTTP2 ...), record only those and keep the others' recorded seeds."""
    only = set(sys.argv[1:])
    recorders = {"HTTP": record_http, "REDIS": record_redis, "DNS": record_dns, "POSTGRESQL": record_postgres, "MYSQL": record_mysql,
                 "KAFKA": record_kafka, "HTTP2": record_http2, "TLS": record_tls}
    unknown = only - set(recorders)
    if unknown:
        raise SystemExit(f"no recorder for {sorted(unknown)}; known: {sorted(recorders)}")
    from tests.parser_seeds import SEEDS

    conversations: dict[str, list[Conversation]] = {}
    for name, record in recorders.items():
        if only and name not in only:
            conversations.update({k: v for k, v in SEEDS.items() if k == name or (name == "DNS" and k.startswith("DNS-"))})
        elif name == "DNS":
            conversations["DNS-UDP"], conversations["DNS-TCP"] = record()
        else:
            conversations[name] = record()
    write(conversations)
    for name, kept in conversations.items():
        print(f"{name}: {len(kept)} conversations, {sum(len(d) for c in kept for _, d in c)} bytes")


if __name__ == "__main__":
    main()
