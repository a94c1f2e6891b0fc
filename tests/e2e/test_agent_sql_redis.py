"""Redis, PostgreSQL and MySQL through the eBPF agent (in-collector, its default) on real traffic: redis-cli,
psql and the mariadb client (with the compressed protocol) against real servers. The spans on raw.spans are
counted per protocol and side against the commands and statements the clients ran, exactly."""

import os
import subprocess
from collections import Counter

import pytest

from schemas.catalog import NODE_SPANS
from schemas.serde import AvroDeserializer
from tests import servers
from tests.e2e.test_ebpf_agent import running_agent
from tests.kafka_helpers import read_until_idle
from tests.recording import free_port, wait_for_port

SIDES = ("CLIENT_PROCESS", "SERVER_PROCESS")
REDIS = [("SET", "order:42", None), ("GET", "order:42", None), ("INCR", "order:42", "SERVER_ERROR")]  # not an integer
POSTGRES = [("CREATE", "CREATE TABLE orders (id int)", None), ("INSERT", "INSERT INTO orders VALUES (?)", None),
            ("SELECT", "SELECT * FROM missing_table", "CLIENT_ERROR")]
MYSQL = [("CREATE", "CREATE DATABASE shop", None), ("SELECT", "SELECT REPEAT(?, ?)", None), ("SELECT", "SELECT * FROM shop.nope", "CLIENT_ERROR")]


def _run(command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def spans(own_topics, registry, tmp_path_factory):
    settings = own_topics
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with servers.postgres() as pg_port, servers.mariadb(str(tmp_path_factory.mktemp("mysql"))) as my_port:
            wait_for_port(redis_port)
            with running_agent(settings):
                for command in (["SET", "order:42", "paid"], ["GET", "order:42"], ["INCR", "order:42"]):
                    _run(["redis-cli", "-p", str(redis_port), *command])
                pg = _run(["psql", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "tracetap", "-d", "postgres", "-c", "CREATE TABLE orders (id int)",
                           "-c", "INSERT INTO orders VALUES (42)", "-c", "SELECT * FROM missing_table"], env=dict(os.environ, PGSSLMODE="disable"))
                assert "missing_table" in pg.stderr
                my = _run(["mariadb", "-h", "127.0.0.1", "-P", str(my_port), "-u", "root", "--skip-ssl", "--compress", "--force", "-e",
                           "CREATE DATABASE shop; SELECT REPEAT('x', 70000); SELECT * FROM shop.nope"])
                assert "doesn't exist" in my.stderr and len(my.stdout) > 70000
    finally:
        redis.terminate()
        redis.wait(30)
    decode = AvroDeserializer(registry)
    records = [decode(m.value()) for m in read_until_idle(settings, NODE_SPANS.full_name(settings.topics.prefix))]
    return {name: [r for r in records if r["server_port"] == port] for name, port in
            (("REDIS", redis_port), ("POSTGRESQL", pg_port), ("MYSQL", my_port))}


def _counted(records, protocol, resources):
    """(side, request type, resource, error class) of the spans of the statements the client ran, counted."""
    assert {r["protocol"] for r in records} == {protocol}
    return Counter((r["tap_side"], r["request_type"], r["request_resource"], r["error_class"]) for r in records
                   if r["request_resource"] in resources)


@pytest.mark.parametrize("protocol, expected", [("REDIS", REDIS), ("POSTGRESQL", POSTGRES), ("MYSQL", MYSQL)])
def test_each_command_is_one_span_at_the_client_and_one_at_the_server(spans, protocol, expected):
    resources = {resource for _, resource, _ in expected}
    assert _counted(spans[protocol], protocol, resources) == Counter(
        {(side, kind, resource, error): count for (kind, resource, error), count in Counter(expected).items() for side in SIDES})


def test_errors_keep_what_the_server_said(spans):
    for side in SIDES:
        [incr] = [r for r in spans["REDIS"] if r["tap_side"] == side and r["request_type"] == "INCR"]
        assert incr["response_message"].startswith("ERR value is not an integer")
        [missing] = [r for r in spans["POSTGRESQL"] if r["tap_side"] == side and r["request_resource"] == "SELECT * FROM missing_table"]
        assert missing["attributes"]["sql.sqlstate"] == "42P01"
        [nope] = [r for r in spans["MYSQL"] if r["tap_side"] == side and r["request_resource"] == "SELECT * FROM shop.nope"]
        assert nope["response_code"] == 1146
        [big] = [r for r in spans["MYSQL"] if r["tap_side"] == side and r["request_resource"] == "SELECT REPEAT(?, ?)"]
        assert 0 < big["response_bytes"] < 70000  # compressed on the wire: 70,000 x's take far fewer bytes
