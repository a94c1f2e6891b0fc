"""The whole pipeline through a broker that requires SASL_SSL with SCRAM-SHA-512 (tests/secured_kafka.py),
configured the way a user would, with TRACETAP_KAFKA__* variables: both agents capture real HTTP traffic
in a network namespace of the test's own, the Faust job turns it into spans, the sink indexes them and
the Flink job emits the same spans; every record is read back through the secured broker. With a wrong
password each component stops at once with one line and exit 78; a bounded agent run whose broker stops
answering exits 69. Only Kafka is secured: the registry and Elasticsearch are the stack's."""

import dataclasses
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from schemas.catalog import PACKETS, SOCKET_DATA, SPANS
from schemas.kafka import client_config
from schemas.serde import AvroDeserializer
from schemas.topics import apply_catalog
from sinks.elasticsearch import es_client, index_name
from tests.e2e.test_ebpf_agent import _start_agent
from tests.e2e.test_packet_agent import _start_agent as _start_packet_agent
from tests.e2e.test_stream_jobs import _copy_input, _run_flink, _run_worker, _stop
from tests.kafka_helpers import read_until_idle
from tests.pods import ns, wait_for_port
from tests.recording import free_port
from tests.secured_kafka import USER

REPO = Path(__file__).resolve().parents[2]
PORT = 8080  # inside the test's own namespace
REQUESTS = 3
PAGE = b"hello through a secured broker\n"


@pytest.fixture(scope="module")
def secured(secured_kafka, settings, registry):
    """Settings on the secured broker (through the environment, as a user sets them), topics of this module's own."""
    prefix = f"{settings.topics.prefix}secured."
    mine = dataclasses.replace(secured_kafka.settings(settings), topics=dataclasses.replace(settings.topics, prefix=prefix),
                               elasticsearch=dataclasses.replace(settings.elasticsearch, index_prefix=f"{settings.elasticsearch.index_prefix}-secured"))
    admin = AdminClient(client_config(mine.kafka))
    apply_catalog(admin, registry, prefix, 1)
    env = {**secured_kafka.env(), "TRACETAP_ELASTICSEARCH__INDEX_PREFIX": mine.elasticsearch.index_prefix}  # the test helpers add the prefix
    return {"settings": mine, "env": env, "admin": admin, "broker": secured_kafka}


def _env(secured, **more):
    return {**os.environ, **secured["env"], "TRACETAP_TOPICS__PREFIX": secured["settings"].topics.prefix, **more}


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """An HTTP server in a network namespace of its own, so the agents capture this test's traffic and nothing else."""
    assert os.geteuid() == 0, "the secured pipeline e2e tests need root (eBPF, network namespaces, live capture)"
    netns = f"tt-sec-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    server = None
    try:
        ns(netns, "ip", "link", "set", "lo", "up")
        root = tmp_path_factory.mktemp("www")
        (root / "hello.txt").write_bytes(PAGE)
        server = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "http.server", str(PORT), "--bind", "127.0.0.1",
                                   "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(netns, PORT)
        yield netns
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        subprocess.run(["ip", "netns", "delete", netns], check=False)


def _requests(netns, count=REQUESTS):
    for _ in range(count):  # one connection each
        assert ns(netns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{PORT}/hello.txt").stdout == "200"


@pytest.fixture(scope="module")
def captured(secured, web, registry):
    settings, env = secured["settings"], secured["env"]
    agents = [_start_agent(settings, {**env, "TRACETAP_AGENT__INCLUDE_NETNS": web}, raw=True),  # raw: every record crosses SASL_SSL
              _start_packet_agent(settings, {**env, "TRACETAP_PACKETS__TAPS": f"lo@{web}=server-nic/web",
                                             "TRACETAP_PACKETS__CAPTURE_FILTER": f"port {PORT}"}, "--duration", "120", "--raw")]
    try:
        time.sleep(1.0)  # the eBPF agent's first poll
        _requests(web)
        time.sleep(1.0)
        summaries = [_stop(agent) for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    decode = AvroDeserializer(registry)
    data = [decode(m.value()) for m in read_until_idle(settings, SOCKET_DATA.full_name(settings.topics.prefix))]
    packets = [decode(m.value()) for m in read_until_idle(settings, PACKETS.full_name(settings.topics.prefix))]
    return {"data": data, "packets": packets, "summaries": summaries}


def test_the_ebpf_agent_delivers_the_requests_through_sasl_ssl(captured):
    requests = [r for r in captured["data"] if r["payload"].startswith(b"GET /hello.txt ")]
    assert Counter(r["comm"] == "curl" for r in requests) == {True: REQUESTS, False: REQUESTS}  # curl's send, the server's read
    responses = [r for r in captured["data"] if r["payload"].startswith(b"HTTP/1.") and r["direction"] == "EGRESS"]
    assert len(responses) == REQUESTS  # the server's response heads (its body, a later write, goes as a byte count)
    assert "delivered=" in captured["summaries"][0] and "kafka_undelivered" not in captured["summaries"][0]


def test_the_packet_agent_delivers_the_requests_through_sasl_ssl(captured):
    gets = [p for p in captured["packets"] if p["http_method"] == "GET"]
    assert [(p["http_uri"], p["tap_point"], p["dst_port"]) for p in gets] == [("/hello.txt", "server-nic", PORT)] * REQUESTS


@pytest.fixture(scope="module")
def faust_spans(secured, captured, registry):
    settings = secured["settings"]
    _run_worker(settings, f"tt-faust-sec-{uuid.uuid4().hex[:6]}", free_port(), extra_env=secured["env"])
    return _hello_spans(settings, registry)


def _hello_spans(settings, registry):
    decode = AvroDeserializer(registry)
    spans = [decode(m.value()) for m in read_until_idle(settings, SPANS.full_name(settings.topics.prefix), idle_s=2)]
    return [s for s in spans if s["request_resource"] == "/hello.txt"]


def test_the_faust_job_reads_and_writes_through_sasl_ssl(faust_spans):
    assert Counter(s["tap_side"] for s in faust_spans) == {"CLIENT_PROCESS": REQUESTS, "SERVER_PROCESS": REQUESTS, "SERVER_NIC": REQUESTS}
    assert all(s["response_code"] == 200 for s in faust_spans)


def test_the_sink_indexes_the_spans_it_reads_through_sasl_ssl(secured, faust_spans):
    settings = secured["settings"]
    done = subprocess.run([sys.executable, "-m", "cli.main", "sink", "elasticsearch", "--topic", "spans", "--exit-when-idle", "3"],
                          cwd=REPO, env=_env(secured), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    es = es_client(settings.elasticsearch)
    index = index_name(settings.elasticsearch, SPANS)
    es.indices.refresh(index=index)
    hits = es.search(index=index, size=1000)["hits"]["hits"]
    indexed = {h["_id"] for h in hits if h["_source"]["request_resource"] == "/hello.txt"}
    assert indexed == {s["span_id"] for s in faust_spans}


def test_the_flink_job_reads_and_writes_through_sasl_ssl(secured, faust_spans, registry, tmp_path):
    copy = _copy_input(secured["settings"], secured["admin"], registry, "flink.")
    _run_flink(copy, f"tt-flink-sec-{uuid.uuid4().hex[:6]}", tmp_path / "checkpoints",
               extra_env=secured["env"])
    assert {s["span_id"] for s in _hello_spans(copy, registry)} == {s["span_id"] for s in faust_spans}


def test_with_a_wrong_password_every_component_stops_with_one_line_and_exit_78(secured, tmp_path):
    broker = secured["broker"]
    env = _env(secured, TRACETAP_KAFKA__SASL_PASSWORD="not-the-password")
    pcap = tmp_path / "any.pcap"
    pcap.write_bytes(b"\xd4\xc3\xb2\xa1")  # never read: the check comes first
    commands = {"ebpf agent": ["agent", "ebpf", "--duration", "5"], "packet agent": ["agent", "packets", "--read", str(pcap)],
                "faust": ["streams", "faust", "--web-port", str(free_port())], "flink": ["streams", "flink", "--bounded"],
                "sink": ["sink", "elasticsearch", "--exit-when-idle", "1"]}
    started = time.monotonic()
    running = {name: subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for name, args in commands.items()}
    for name, process in running.items():
        out, err = process.communicate(timeout=60)
        assert process.returncode == 78, (name, out, err)
        assert err.strip().splitlines() == [
            f"tracetap: invalid setting kafka.sasl_password: Kafka at {broker.bootstrap} refused the credentials of user {USER} "
            "(SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism "
            "SCRAM-SHA-512): check kafka.sasl_username, kafka.sasl_mechanism and TRACETAP_KAFKA__SASL_PASSWORD"], name
    assert time.monotonic() - started < 40  # refused at once, not after a timeout


def test_a_bounded_run_whose_broker_stops_answering_exits_69(secured, web):
    """Reported: a run that ended with records undelivered exited 0. The broker is paused (SIGSTOP: connections stay
    open, nothing answers) once the agent captures; its records time out after 3 s and the run says so."""
    settings, broker = secured["settings"], secured["broker"]
    env = _env(secured, TRACETAP_AGENT__INCLUDE_NETNS=web, TRACETAP_KAFKA__CLIENT_PROPERTIES='{"message.timeout.ms": "3000"}')
    agent = subprocess.Popen([sys.executable, "-m", "cli.main", "agent", "ebpf", "--duration", "4", "--raw"], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "capturing" in agent.stdout.readline(), agent.stderr.read()[-2000:]
        broker.pause()
        _requests(web)
        out, err = agent.communicate(timeout=90)
    finally:
        broker.resume()
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 69, err[-3000:]
    totals = dict(part.split("=") for part in out.strip().splitlines()[-1].split("; ")[1].split(", "))
    assert int(totals["kafka_undelivered"]) >= 2 * REQUESTS  # at least the requests' send and read events
    lost = {k: int(totals[k]) for k in ("queue_overflow", "kafka_undelivered", "undelivered_at_exit") if int(totals.get(k, 0))}
    assert err.strip().splitlines()[-1] == (f"tracetap: {sum(lost.values())} of {totals['offered']} captured records did not reach "
                                            f"Kafka at {broker.bootstrap} ({', '.join(f'{k}={v}' for k, v in lost.items())})")
    assert "Traceback" not in err
