"""PostgreSQL seen as an agent started after the connections were: a real psql and a real psycopg pool connection
talk to a real postgres through a relay, and the recording is assembled from a point after the startup, on a port
that names no protocol (a pgbouncer's), with the socket's role unknown. Expected values are the statements run."""

import os
import subprocess
import time

import psycopg
import pytest

from tests import servers
from tests.recording import RecordingRelay
from tracetap.assembly import SocketAssembler
from tracetap.model import SocketData, TapSide
from tracetap.protocols import detect
from tracetap.protocols.postgres import POSTGRES

POOLER_PORT = 6432


@pytest.fixture(scope="module")
def postgres():
    with servers.postgres() as port:
        yield port


def _assemble_from(chunks, start):
    """The client's socket as an agent that attached before chunk `start` reports it: role unknown, ports as a pooler's."""
    assembler, spans, t = SocketAssembler(), [], 10_000
    for direction, data in chunks[start:]:
        t += 1000
        spans += assembler.add(SocketData("node", t, t + 10, 1, 1, "app", 3, direction == "c2s", len(data), "TCP", "127.0.0.1",
                                          50000, "127.0.0.1", POOLER_PORT, "UNKNOWN", data, None, None))
    return assembler, spans + assembler.close(t + 1)


def _first_chunk(chunks, direction, marker):
    return next(i for i, (d, data) in enumerate(chunks) if d == direction and marker in data)


def test_psql_queries_after_the_startup_are_detected_on_any_port(postgres):
    relay = RecordingRelay(postgres)
    subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(relay.port), "-U", "tracetap", "-d", "postgres", "-c", "SELECT 'before the capture'",
                    "-c", "CREATE TABLE pool_items (id int)", "-c", "INSERT INTO pool_items VALUES (7)", "-c", "SELECT id FROM pool_items WHERE id = 7",
                    "-c", "SELECT * FROM no_such_table"], env=dict(os.environ, PGSSLMODE="disable"), capture_output=True, timeout=30, check=False)
    time.sleep(0.3)
    relay.close()
    [chunks] = relay.connections()
    start = _first_chunk(chunks, "c2s", b"CREATE TABLE")
    assert detect("TCP", chunks[start][1], POOLER_PORT) is POSTGRES
    assembler, spans = _assemble_from(chunks, start)
    assert assembler.protocol is POSTGRES
    assert [(s.request_type, s.request_resource, s.error_class, s.tap_side, s.server_port) for s in spans] == [
        ("CREATE", "CREATE TABLE pool_items (id int)", None, TapSide.CLIENT_PROCESS, POOLER_PORT),
        ("INSERT", "INSERT INTO pool_items VALUES (?)", None, TapSide.CLIENT_PROCESS, POOLER_PORT),
        ("SELECT", "SELECT id FROM pool_items WHERE id = ?", None, TapSide.CLIENT_PROCESS, POOLER_PORT),
        ("SELECT", "SELECT * FROM no_such_table", "CLIENT_ERROR", TapSide.CLIENT_PROCESS, POOLER_PORT)]
    assert spans[-1].attributes["sql.sqlstate"] == "42P01"  # undefined_table
    assert assembler.counters.malformed == 0


def test_a_pooled_connection_seen_from_a_prepared_statement_or_a_response(postgres):
    relay = RecordingRelay(postgres)
    with psycopg.connect(host="127.0.0.1", port=relay.port, user="tracetap", dbname="postgres", sslmode="disable", autocommit=True) as conn:
        conn.execute("SELECT 'before the capture'").fetchall()
        for i in range(3):  # prepared once (Parse), then Bind/Execute/Sync of the named statement
            conn.execute("SELECT %s::int + 100", (i,), prepare=True).fetchall()
        conn.execute("SELECT 'after'").fetchall()
    time.sleep(0.3)
    relay.close()
    [chunks] = relay.connections()
    runs = [i for i, (d, data) in enumerate(chunks) if d == "c2s" and data[:1] == b"B"]
    assert len(runs) == 3 and b"SELECT" not in chunks[runs[1]][1]  # the statement's text went once, in its Parse

    # from the second run of the prepared statement: Bind/Describe/Execute/Sync alone is enough to tell PostgreSQL
    assert detect("TCP", chunks[runs[1]][1], POOLER_PORT) is POSTGRES
    assembler, spans = _assemble_from(chunks, runs[1])
    assert [(s.request_type, s.request_resource, s.error_class, s.response_message) for s in spans] == [
        ("EXECUTE", None, None, "SELECT 1"), ("EXECUTE", None, None, "SELECT 1"), ("SELECT", "SELECT ?", None, "SELECT 1")]

    # from the response to the first run: the server's bytes do not settle the protocol, the client's next ones do
    answer = runs[0] + 1
    assert chunks[answer][0] == "s2c"
    assembler, spans = _assemble_from(chunks, answer)
    assert assembler.protocol is POSTGRES and len(spans) == 3 and spans[-1].request_resource == "SELECT ?"
    assert assembler.counters.malformed == 0
