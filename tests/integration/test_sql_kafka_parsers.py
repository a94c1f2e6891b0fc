"""PostgreSQL (psql and psycopg against a real postgres), MySQL (the mariadb client against a real
mariadbd) and Kafka (librdkafka against the stack's broker): bytes recorded through a relay, parsed and
assembled into spans. Expected values are the statements the test ran."""

import os
import socket
import struct
import subprocess
import time

import pytest

from tests import servers
from tests.recording import RecordingRelay
from tracetap.assembly import SocketAssembler
from tracetap.model import SocketData
from tracetap.protocols import detect
from tracetap.protocols.kafka import KAFKA
from tracetap.protocols.mysql import MYSQL
from tracetap.protocols.postgres import POSTGRES




def _assemble(relay, server_port):
    """The client's view of a recorded single-connection conversation, as the eBPF agent would report it."""
    assembler, spans, sent, t = SocketAssembler(), [], {"c2s": 0, "s2c": 0}, 10_000
    for direction, data in relay.chunks:
        t += 1000
        spans += assembler.add(SocketData("node", t, t + 10, 1, 1, "client", 3, direction == "c2s", len(data), "TCP", "127.0.0.1",
                                          50000, "127.0.0.1", server_port, "UNKNOWN", data, 1 + sent[direction], None))
        sent[direction] += len(data)
    return assembler, spans + assembler.close(t + 1)


@pytest.fixture(scope="module")
def postgres():
    with servers.postgres() as port:
        yield port


def test_postgres_simple_and_extended_queries_become_spans(postgres):
    import psycopg

    relay = RecordingRelay(postgres)
    env = dict(os.environ, PGSSLMODE="disable")
    subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(relay.port), "-U", "tracetap", "-d", "postgres", "-c",
                    "CREATE TABLE orders (id int, owner text)", "-c", "INSERT INTO orders VALUES (42, 'alice')",
                    "-c", "SELECT owner FROM orders WHERE id = 42", "-c", "SELECT * FROM missing_table"],
                   env=env, capture_output=True, timeout=30)
    with psycopg.connect(host="127.0.0.1", port=relay.port, user="tracetap", dbname="postgres", sslmode="disable") as conn:
        conn.execute("SELECT owner FROM orders WHERE id = %s AND owner = %s", (42, "alice")).fetchall()
    time.sleep(0.3)
    relay.close()
    assert detect("TCP", relay.stream("c2s"), 12345) is POSTGRES
    assembler, spans = _assemble(relay, 5432)
    queries = [(s.request_type, s.request_resource, s.error_class) for s in spans if s.request_type not in ("STARTUP", "AUTH", "SSL_REQUEST")]
    assert ("CREATE", "CREATE TABLE orders (id int, owner text)", None) in queries
    assert ("INSERT", "INSERT INTO orders VALUES (?, ?)", None) in queries  # literals masked
    assert ("SELECT", "SELECT owner FROM orders WHERE id = ?", None) in queries
    missing = next(s for s in spans if s.request_resource == "SELECT * FROM missing_table")
    assert missing.error_class == "CLIENT_ERROR" and missing.response_message.startswith("42P01")  # undefined_table
    extended = [s for s in spans if s.request_resource and "$1" in s.request_resource]
    assert [(s.request_type, s.request_resource, s.error_class) for s in extended] == [("SELECT", "SELECT owner FROM orders WHERE id = $1 AND owner = $2", None)]
    assert assembler.counters.malformed == 0
    assert all(s.response_message for s in spans if s.request_type in ("CREATE", "INSERT", "SELECT") and not s.error_class)


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    with servers.mariadb(str(tmp_path_factory.mktemp("mysql"))) as port:
        yield port


def test_mysql_login_queries_errors_and_result_sets_become_spans(mariadb):
    relay = RecordingRelay(mariadb)
    script = ("CREATE DATABASE shop; USE shop; CREATE TABLE t (id INT, name VARCHAR(20)); "
              "INSERT INTO t VALUES (1, 'a'), (2, 'b'); SELECT name FROM t WHERE id > 0; SELECT * FROM nope;")
    subprocess.run(["mariadb", "-h", "127.0.0.1", "-P", str(relay.port), "-u", "root", "--force", "-e", script], capture_output=True, timeout=30)
    time.sleep(0.3)
    relay.close()
    assembler, spans = _assemble(relay, 3306)
    assert assembler.protocol is MYSQL
    kinds = [(s.request_type, s.request_resource, s.error_class) for s in spans]
    assert kinds[0][0] == "LOGIN" and kinds[0][2] is None
    assert ("INSERT", "INSERT INTO t VALUES (?, ?), (?, ?)", None) in kinds
    assert ("SELECT", "SELECT name FROM t WHERE id > ?", None) in kinds
    nope = next(s for s in spans if s.request_resource == "SELECT * FROM nope")
    assert (nope.error_class, nope.response_code) == ("CLIENT_ERROR", 1146) and "doesn't exist" in nope.response_message
    select = next(s for s in spans if s.request_resource == "SELECT name FROM t WHERE id > ?")
    assert select.response_bytes > 0 and assembler.counters.malformed == 0


def test_kafka_requests_from_librdkafka_and_the_brokers_error_codes(stack, settings):
    from confluent_kafka.admin import AdminClient

    broker_port = int(settings.kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])
    relay = RecordingRelay(broker_port)
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{relay.port}", "client.id": "tracetap-parser-test"})
    admin.list_topics(timeout=10)
    # an ApiVersions v5 request (this broker knows up to v4): it answers UNSUPPORTED_VERSION
    with socket.create_connection(("127.0.0.1", relay.port)) as raw:
        body = struct.pack(">hhih", 18, 5, 4242, 4) + b"test" + b"\x00" + b"\x02t" + b"\x021" + b"\x00"
        raw.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", raw.recv(4))[0]
        while size > 0:
            size -= len(raw.recv(size))
    time.sleep(0.3)
    relay.close()
    assert detect("TCP", relay.stream("c2s"), 12345) is KAFKA
    # several connections went through the relay; each is assembled on its own, as the agent sees sockets
    assembler_spans = _assemble_per_connection(relay, broker_port)
    apis = [(s.request_type, s.attributes.get("kafka.client_id"), s.error_class) for s in assembler_spans]
    assert ("ApiVersions", "tracetap-parser-test", None) in apis and ("Metadata", "tracetap-parser-test", None) in apis
    refused = [s for s in assembler_spans if s.attributes.get("kafka.correlation_id") == "4242"]
    assert [(s.request_type, s.response_code, s.response_message, s.error_class) for s in refused] == [
        ("ApiVersions", 35, "UNSUPPORTED_VERSION", "CLIENT_ERROR")]


def _assemble_per_connection(relay, server_port):
    spans = []
    for connection in relay.connections():
        assembler, t, sent = SocketAssembler(), 10_000, {"c2s": 0, "s2c": 0}
        for direction, data in connection:
            t += 1000
            spans += assembler.add(SocketData("node", t, t + 10, 1, 1, "client", 3, direction == "c2s", len(data), "TCP", "127.0.0.1",
                                              50000, "127.0.0.1", server_port, "CLIENT", data, 1 + sent[direction], None))
            sent[direction] += len(data)
        spans += assembler.close(t + 1)
    return spans
