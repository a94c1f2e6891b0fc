"""Both stream jobs on recorded traffic: a three-service chain (A -> B -> C, B also resolving names through a
real dnsmasq), captured at all four points by the real agents in their default mode, in-collector (spans
assembled on the node, to raw.spans: eBPF for the processes, two packet agents on loopback labelled
client-nic and server-nic), behind 20,000 background events produced out of order
(within the bound) and followed by late ones (beyond it).

`tracetap streams faust` runs on it; its outputs are read back from Kafka and checked against what the
test did and measured. A second Faust worker is SIGKILLed mid-stream and restarted: its outputs equal an
uninterrupted run's, id for id. Then the contract between the engines: `tracetap streams flink` (parallelism
2) on a copy of the same input emits the same records as Faust, id for id and field for field, and a Flink
job killed mid-stream and restored from its last checkpoint commits exactly those records too.

Among the background events are two records the core refuses (CRAFTED): a read whose payload is longer than
the bytes it returned, in the middle of a busy socket's events, and a request packet without addresses on
the same flow. Both engines dead-letter them with the exception and the core's frame, and their output is a
run's without them. Pickles written into the Faust job's private topic and changelogs are reported, never
run."""

import dataclasses
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks.core_pipeline import make_events
from cli.main import state_dir
from schemas.catalog import (ALERTS, DEAD_LETTER, NETWORK_METRICS, NODE_SPANS, PACKETS, PATHS, RED_METRICS, RESOURCES,
                             SOCKET_DATA, SOCKET_LIFECYCLE, SPANS)
from schemas.kafka import client_config
from schemas.producer import AvroProducer
from schemas.topics import apply_catalog
from schemas.serde import AvroDeserializer
from tests.e2e.test_ebpf_agent import _start_agent
from tests.e2e.test_packet_agent import _start_agent as _start_packet_agent
from tests.kafka_helpers import read_to_end, read_until_idle
from tests.recording import free_port, start_dnsmasq, wait_for_port

REPO = Path(__file__).resolve().parents[2]
SERVICE = Path(__file__).with_name("chain_service.py")
REQUESTS = ["/order"] * 6 + ["/slow", "/fail"]
GARBAGE = b"not an avro record"
LATE = 30  # background events replayed two minutes late, after everything else
CRAFTED = {}  # what the core refuses, by (topic name without prefix, encoded value) -> the core frame's function


def _stop(process):
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    return out


@pytest.fixture(scope="module")
def recording(own_topics, registry):
    """Run the chain under the agents; returns the ports, what each request took as the client saw it."""
    settings = own_topics
    _add_background_load(settings, registry)
    c_port, b_port = free_port(), free_port()
    dnsmasq, dns_port = start_dnsmasq("--local=/svc.test/", "--address=/stock.svc.test/10.1.2.3")
    service_c = subprocess.Popen([sys.executable, str(SERVICE), str(c_port)], stdout=subprocess.PIPE)
    service_b = subprocess.Popen([sys.executable, str(SERVICE), str(b_port), str(c_port), str(dns_port)], stdout=subprocess.PIPE)
    agents = []
    try:
        wait_for_port(b_port)
        wait_for_port(c_port)
        agents.append(_start_agent(settings))
        capture_filter = " or ".join(f"port {p}" for p in (b_port, c_port, dns_port))
        agents += [_start_packet_agent(settings, {"TRACETAP_PACKETS__TAPS": f"lo={tap}", "TRACETAP_PACKETS__CAPTURE_FILTER": capture_filter},
                                       "--duration", "120") for tap in ("client-nic", "server-nic")]
        time.sleep(1.0)  # dumpcap is capturing once the agent says so; give the eBPF agent's first poll a moment too
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", b_port, timeout=10)
        took = []
        for path in REQUESTS:
            started = time.monotonic_ns()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            took.append((path, response.status, time.monotonic_ns() - started))
        conn.close()
        time.sleep(1.0)
        for agent in agents:
            _stop(agent)
        _add_late_events(settings, registry)
    finally:
        for process in [*agents, service_b, service_c, dnsmasq]:
            if process.poll() is None:
                process.kill()
                process.wait()
    return {"settings": settings, "b": b_port, "c": c_port, "dns": dns_port, "took": took}


def _add_background_load(settings, registry, events=20_000):
    """Protocol-exact HTTP, Redis and DNS socket data on 200 other sockets, in the minute before the
    recording: the worker has real work to do when it is killed, and findings must be picked out."""
    records = make_events(events)
    first = records[0]["start_time"]
    start = time.time_ns() - 60_000_000_000
    for r in records:  # 1 ms apart (make_events packs them 1 us apart): 20 s of traffic
        r.update(start_time=start + (r["start_time"] - first) * 1000, end_time=start + (r["end_time"] - first) * 1000,
                 cgroup_id=0, host="synthetic")
    # Out of order within the bound: each block of 400 events goes out socket by socket (each socket's own
    # events stay in order, as one connection's are), so event time steps back by up to ~0.4 s.
    shuffled = []
    for i in range(0, len(records), 400):
        shuffled += sorted(records[i:i + 400], key=lambda r: r["socket_id"])
    producer = AvroProducer(settings, registry)
    at = 5000
    for i, r in enumerate(shuffled):
        producer.produce(SOCKET_DATA, _key(r), r)
        if i == at:
            _add_crafted(producer, r, [n for n in shuffled[at + 1:] if n["socket_id"] == r["socket_id"]])
    producer.produce_encoded(SOCKET_DATA, "tcp|10.9.9.9|1|10.9.9.9|2", GARBAGE)  # not Avro: the job dead-letters it
    producer.flush()


def _add_crafted(producer, neighbour, after):
    """Two records that fit their schemas but that no capture produces, on the flow of `neighbour` (a busy
    background socket whose next events follow): a read of 10 bytes with the whole 100-odd-byte payload, and
    an HTTP request packet without addresses. The core refuses both (tracetap.errors.InvalidEvent)."""
    assert after, "the crafted read must sit between events of its socket"
    longer = dict(neighbour, bytes=10, start_time=neighbour["end_time"], end_time=neighbour["end_time"] + 100)
    assert len(longer["payload"]) > 10
    packet = {f["name"]: None for f in PACKETS.schema()["fields"]}
    packet.update(host="synthetic", time=neighbour["end_time"], interface="eth0", tap_point="client-nic", l4_protocol="TCP",
                  payload_bytes=90, frame_bytes=156, truncated=False, malformed=False, http_method="GET", http_uri="/crafted",
                  dst_ip=neighbour["remote_ip"], dst_port=neighbour["remote_port"])
    for spec, record, function in ((SOCKET_DATA, longer, "from_record"), (PACKETS, packet, "check_packet")):
        value = producer.serializer(spec)(record)
        producer.produce_encoded(spec, _key(neighbour), value, time_ns=record["end_time" if spec is SOCKET_DATA else "time"])
        CRAFTED[(spec.name, value)] = function


def _key(record):
    from tracetap.flow import Endpoint, flow_id

    return flow_id(record["l4_protocol"], Endpoint(record["local_ip"], record["local_port"]),
                   Endpoint(record["remote_ip"], record["remote_port"]))


def _add_late_events(settings, registry):
    """Background events two minutes older than anything in their partitions, on sockets of their own: late
    beyond the allowed lateness in any engine, so both dead-letter them."""
    producer = AvroProducer(settings, registry)
    for i, r in enumerate(make_events(LATE)):
        start = time.time_ns() - 120_000_000_000 - 1000 * (LATE - i)
        r.update(start_time=start, end_time=start + 500, socket_id=900_000 + i, cgroup_id=0, host="synthetic")
        producer.produce(SOCKET_DATA, _key(r), r)
    producer.flush()


def _run_worker(settings, app_id, web_port, kill_after_s=None, extra_env=None):
    """`tracetap streams faust` until every raw record is consumed and nothing more comes out; with
    kill_after_s, SIGKILL it that far into the run first and start it again."""
    env = dict(os.environ, TRACETAP_TOPICS__PREFIX=settings.topics.prefix, **(extra_env or {}))
    command = [sys.executable, "-m", "cli.main", "streams", "faust", "--app-id", app_id, "--web-port", str(web_port),
               "--trace-gap-s", "1", "--idle-flush-s", "4", "--window-s", "10", "--slow-ms", "1000"]
    log = tempfile.NamedTemporaryFile("w+", prefix=f"{app_id}-", suffix=".log")
    worker = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        if kill_after_s is not None:
            _wait_for_stats(web_port, lambda s: sum(s["consumed"].values()) > 0, timeout_s=120, log=log)
            time.sleep(kill_after_s)
            worker.kill()
            worker.wait()
            worker = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        last = {}

        def settled(stats):
            nonlocal last
            done = (stats["tables"]["pending_spans"] == 0 and stats["tables"]["open_red_windows"] == 0
                    and sum(stats["lag"].values()) == 0 and stats["lag"] and stats["produced"] == last.get("produced"))
            last = stats
            return done and sum(stats["produced"].values()) > 0

        stats = _wait_for_stats(web_port, settled, timeout_s=240, every_s=3, log=log)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        return stats
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()
        _remove_worker_state(settings, app_id)


def _remove_worker_state(settings, app_id):
    """The app's own topics (changelogs, assignor) and its local RocksDB files: not under the session's prefix."""
    shutil.rmtree(state_dir(settings, dict(os.environ)) / "faust" / app_id, ignore_errors=True)
    admin = AdminClient(client_config(settings.kafka))
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{app_id}-")]
    for future in (admin.delete_topics(mine, operation_timeout=30).values() if mine else ()):
        future.result()


def _wait_for_stats(port, condition, timeout_s, every_s=0.5, log=None):
    deadline = time.monotonic() + timeout_s
    stats = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/tracetap/stats/", timeout=5) as response:
                stats = json.load(response)
            if condition(stats):
                return stats
        except OSError:
            pass
        time.sleep(every_s)
    tail = errors = ""
    if log is not None:
        log.flush()
        log.seek(0)
        text = log.read()
        tail = text[-3000:]
        errors = "\n".join([line for line in text.splitlines() if "ERROR" in line or "Error" in line or "offset gap" in line][:30])
    # the stats last: a report that keeps only the end of a long failure keeps them
    raise AssertionError(f"the worker did not get there in {timeout_s} s\nworker log errors:\n{errors}\n"
                         f"worker log tail:\n{tail}\nlast stats: {stats}")


def _outputs(settings, registry):
    decode = AvroDeserializer(registry)
    read = {spec.name: [decode(m.value()) for m in read_until_idle(settings, spec.full_name(settings.topics.prefix), idle_s=2)]
            for spec in (SPANS, PATHS, RED_METRICS, NETWORK_METRICS, ALERTS)}
    return read


@pytest.fixture(scope="module")
def job(recording, registry):
    settings = recording["settings"]
    stats = _run_worker(settings, f"tt-faust-{uuid.uuid4().hex[:6]}", free_port())
    out = {**recording, "stats": stats, **_outputs(settings, registry)}
    return out


def _chain_spans(job):
    ports = (job["b"], job["c"])
    return [s for s in job["spans"] if s["server_port"] in ports]


def test_each_request_is_seen_at_all_four_points_of_both_hops(job):
    spans = _chain_spans(job)
    for port, count in ((job["b"], len(REQUESTS)), (job["c"], REQUESTS.count("/order") + REQUESTS.count("/slow"))):
        sides = defaultdict(int)
        for s in spans:
            if s["server_port"] == port and s["protocol"] == "HTTP":
                sides[s["tap_side"]] += 1
        assert dict(sides) == {side: count for side in ("CLIENT_PROCESS", "CLIENT_NIC", "SERVER_NIC", "SERVER_PROCESS")}, port


def test_a_served_request_is_the_parent_of_the_calls_it_made_and_each_hop_shares_one_trace_id(job):
    spans = _chain_spans(job)
    by_id = {s["span_id"]: s for s in spans}
    b_servers = [s for s in spans if s["server_port"] == job["b"] and s["tap_side"] == "SERVER_PROCESS" and s["request_resource"] == "/order"]
    assert len(b_servers) == REQUESTS.count("/order")
    for server in b_servers:
        calls = [s for s in spans if s["parent_span_id"] == server["span_id"] and s["tap_side"] == "CLIENT_PROCESS"]
        dns = [s for s in job["spans"] if s["parent_span_id"] == server["span_id"] and s["protocol"] == "DNS"]
        assert [c["server_port"] for c in calls if c["protocol"] == "HTTP"] == [job["c"]]
        assert [d["request_resource"] for d in dns] == ["stock.svc.test"]
        # each hop's four points share the hop's trace id: B's call to C down to C's server process ...
        call = next(c for c in calls if c["protocol"] == "HTTP")
        c_hop = [s for s in spans if s["trace_id"] == call["trace_id"] and s["server_port"] == job["c"]]
        assert {s["tap_side"] for s in c_hop} == {"CLIENT_PROCESS", "CLIENT_NIC", "SERVER_NIC", "SERVER_PROCESS"}
        # ... and A's call to B with B's server span; the parent links go up from C through both hops to A
        a_hop = [s for s in spans if s["trace_id"] == server["trace_id"] and s["server_port"] == job["b"]]
        assert {s["tap_side"] for s in a_hop} == {"CLIENT_PROCESS", "CLIENT_NIC", "SERVER_NIC", "SERVER_PROCESS"}
        root = next(s for s in c_hop if s["tap_side"] == "SERVER_PROCESS")
        while root["parent_span_id"] in by_id:
            root = by_id[root["parent_span_id"]]
        assert root["tap_side"] == "CLIENT_PROCESS" and root["server_port"] == job["b"] and root["parent_span_id"] is None


def test_paths_put_the_slow_request_time_in_the_last_service(job):
    paths = [p for p in job["paths"] if p["server_port"] in (job["b"], job["c"]) and p["protocol"] == "HTTP"]
    assert len(paths) == len(REQUESTS) + REQUESTS.count("/order") + REQUESTS.count("/slow")
    assert all(p["complete"] for p in paths)
    slow_c = [p for p in paths if p["server_port"] == job["c"] and p["request_resource"] == "/stock/slow"]
    assert len(slow_c) == 1
    slow = slow_c[0]
    assert slow["server_processing_ns"] >= 1_200_000_000  # the service slept 1.2 s
    segments = [slow[k] for k in ("req_client_stack_ns", "req_network_ns", "req_server_stack_ns", "resp_server_stack_ns",
                                  "resp_network_ns", "resp_client_stack_ns")]
    # Loopback: the stacks and the network take microseconds. Both taps are on `lo`, each dumpcap stamping the
    # same packet on its own, so the "network" between them may come out a few hundred ns below zero.
    assert all(-1_000_000 < s < 50_000_000 for s in segments), segments
    client_took = dict((p, t) for p, _, t in job["took"])["/slow"]
    slow_b = [p for p in paths if p["server_port"] == job["b"] and p["request_resource"] == "/slow"][0]
    assert slow_b["duration_ns"] <= client_took  # A's own clock bounds what the capture saw
    assert slow_b["server_processing_ns"] >= slow["duration_ns"]


def test_red_counts_and_percentiles_match_the_spans(job):
    spans = [s for s in _chain_spans(job) if s["server_port"] == job["b"] and s["tap_side"] == "SERVER_PROCESS"]
    red = [r for r in job["metrics.red"] if r["tap_side"] == "SERVER_PROCESS" and r["protocol"] == "HTTP"
           and any(s["endpoint"] == r["endpoint"] for s in spans)]
    by_endpoint = defaultdict(list)
    for s in spans:
        by_endpoint[s["endpoint"]].append(s["duration_ns"])
    expected_counts = {"GET /order": REQUESTS.count("/order"), "GET /slow": 1, "GET /fail": 1}
    totals = defaultdict(int)
    for r in red:
        totals[r["endpoint"]] += r["request_count"]
    assert dict(totals) == expected_counts
    fail = [r for r in red if r["endpoint"] == "GET /fail"]
    assert sum(r["server_error_count"] for r in fail) == 1
    for r in red:
        if r["request_count"] == len(by_endpoint[r["endpoint"]]):  # the whole series in one window
            durations = sorted(by_endpoint[r["endpoint"]])
            assert r["latency_max_ns"] == durations[-1]
            for name, q in (("latency_p50_ns", 0.5), ("latency_p90_ns", 0.9), ("latency_p99_ns", 0.99)):
                exact = durations[int(q * (len(durations) - 1))]  # the lower rank, as DDSketch defines it
                assert abs(r[name] - exact) <= 0.011 * exact, (name, r[name], exact)  # within 1% relative error


def test_the_slow_request_and_the_502_raise_alerts_with_their_evidence(job):
    slow = [a for a in job["alerts"] if a["kind"] == "SLOW_REQUEST"]
    assert len(slow) == 1
    assert slow[0]["attributes"]["segment"] in ("server_own_ns", "server_processing_ns")
    culprit = [s for s in job["spans"] if s["span_id"] == slow[0]["attributes"]["culprit_span_id"]][0]
    assert culprit["server_port"] == job["c"] and culprit["tap_side"] == "SERVER_PROCESS"
    failed = [a for a in job["alerts"] if a["kind"] == "ERROR_WITH_FAILED_DEPENDENCY"]
    assert len(failed) == 1
    assert failed[0]["attributes"]["dns.rcode"] == "NXDOMAIN" and failed[0]["attributes"]["dns.name"] == "missing.svc.test"
    assert failed[0]["measurements"]["response_code"] == 502


def test_the_worker_consumed_everything_and_dead_lettered_only_the_garbage_with_its_reason(job, registry):
    settings = job["settings"]
    raw = sum(len(read_until_idle(settings, spec.full_name(settings.topics.prefix), idle_s=1))
              for spec in (SOCKET_DATA, PACKETS, SOCKET_LIFECYCLE, NODE_SPANS))
    stats = job["stats"]
    assert stats["consumed"]["span"] > 0  # the agents assembled their spans on the node (in-collector, their default)
    assert sum(v for k, v in stats["consumed"].items() if k != "resource") == raw
    assert stats["dead_letters"] == {"BAD_MAGIC_BYTE": 1, "LATE": LATE, "INVALID_RECORD": 2} and stats["late"] == {"socket_data": LATE}
    letters = _dead_letters(settings, registry)
    garbage = [d for d in letters if d["reason"] == "BAD_MAGIC_BYTE"]
    assert [(d["value"], d["component"]) for d in garbage] == [(GARBAGE, "tracetap streams faust")]
    assert garbage[0]["source_topic"] == SOCKET_DATA.full_name(settings.topics.prefix) and garbage[0]["source_offset"] is not None
    late = [d for d in letters if d["reason"] == "LATE"]
    assert len(late) == LATE and all(d["source_topic"] == SOCKET_DATA.full_name(settings.topics.prefix) for d in late)
    _assert_crafted_dead_lettered(settings, letters, "tracetap streams faust")


def _assert_crafted_dead_lettered(settings, letters, component):
    """Each crafted record is in the dead-letter topic whole, with the exception and the frame of the core that refused it."""
    refused = {(d["source_topic"].removeprefix(settings.topics.prefix), d["value"]): d for d in letters if d["reason"] == "INVALID_RECORD"}
    assert refused.keys() == CRAFTED.keys()
    modules = {"from_record": "model", "check_packet": "nic"}
    for where, letter in refused.items():
        function = CRAFTED[where]
        assert letter["component"] == component and letter["exception_type"] == "InvalidEvent"
        assert re.fullmatch(rf"tracetap/{modules[function]}\.py:\d+ in {function}", letter["core_frame"]), letter["core_frame"]
        assert letter["core_frame"] in letter["detail"] and letter["source_offset"] is not None


def test_the_records_the_core_refuses_leave_the_output_as_a_run_without_them(job, registry, admin):
    """The same input less the crafted records (record for record otherwise), through a worker of its own."""
    without = _copy_input(job["settings"], admin, registry, "uncrafted.",
                          keep=lambda spec, m: (spec.name, m.value()) not in CRAFTED)
    stats = _run_worker(without, f"tt-faust-plain-{uuid.uuid4().hex[:6]}", free_port())
    assert "INVALID_RECORD" not in stats["dead_letters"]
    _assert_same_records(job, _outputs(without, registry))


def _dead_letters(settings, registry):
    decode = AvroDeserializer(registry)
    return [decode(m.value()) for m in read_until_idle(settings, DEAD_LETTER.full_name(settings.topics.prefix), idle_s=1)]


def test_a_worker_killed_mid_stream_and_restarted_emits_the_same_records(job, registry, admin):
    """Same input under a second prefix (copied record for record, partition for partition); the worker is
    SIGKILLed while it works through it and started again."""
    second = _copy_input(job["settings"], admin, registry, "again.")
    stats = _run_worker(second, f"tt-faust-kill-{uuid.uuid4().hex[:6]}", free_port(), kill_after_s=1.0)
    assert stats["recovered_flow_states"] > 0  # it was killed mid-stream: the restart resumed from recovered state
    _assert_same_records(job, _outputs(second, registry))


class _Marker:
    """Unpickled, it creates the file: what a pickle from a topic could do with any code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_pickles_in_the_private_topics_and_the_changelogs_are_reported_and_never_run(job, registry, admin, tmp_path):
    from streams.faust_keyed import hop_topic

    settings = _copy_input(job["settings"], admin, registry, "pickled.")
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Marker(control)))
    assert control.exists()  # the payload runs when unpickled
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Marker(marker))
    app_id = f"tt-faust-pickle-{uuid.uuid4().hex[:6]}"
    flow_changelog, conversation_changelog = f"{app_id}-flow-stages-changelog", f"{app_id}-conversation-stages-changelog"
    conversation_topic = hop_topic(settings.topics.prefix, app_id, "conversation")
    replicas = settings.topics.replication_factor
    created = admin.create_topics([NewTopic(name, SOCKET_DATA.partitions, replicas, config={"cleanup.policy": "compact"})
                                   for name in (flow_changelog, conversation_changelog)]
                                  + [NewTopic(conversation_topic, SOCKET_DATA.partitions, replicas)], operation_timeout=30)
    for future in created.values():
        future.result()
    flow = read_until_idle(settings, SOCKET_DATA.full_name(settings.topics.prefix), idle_s=1)[0]  # a flow the worker will read
    producer = Producer(client_config(settings.kafka))
    producer.produce(flow_changelog, payload, flow.key(), partition=flow.partition())  # its partition: where the table looks
    producer.produce(conversation_changelog, payload, b"client|10.0.0.1|40000", partition=2)
    producer.produce(conversation_topic, payload, None, partition=3)
    assert producer.flush(30) == 0

    stats = _run_worker(settings, app_id, free_port())

    assert not marker.exists()
    assert stats["dead_letters"]["UNDECODABLE_STATE"] == 3
    letters = [d for d in _dead_letters(settings, registry) if d["reason"] == "UNDECODABLE_STATE"]
    assert sorted(d["source_topic"] for d in letters) == sorted([flow_changelog, conversation_changelog, conversation_topic])
    assert all(d["value"] == payload for d in letters)
    assert [d["key"] for d in letters if d["source_topic"] == flow_changelog] == [flow.key()]
    assert [d["key"] for d in letters if d["source_topic"] == conversation_changelog] == [b"client|10.0.0.1|40000"]
    _assert_same_records(job, _outputs(settings, registry))  # the job went on as if they were not there


def _copy_input(settings, admin, registry, suffix, keep=lambda spec, message: True):
    """The raw topics under prefix + suffix, record for record (those `keep` keeps): same partitions, offsets,
    keys and timestamps."""
    copy = dataclasses.replace(settings, topics=dataclasses.replace(settings.topics, prefix=settings.topics.prefix + suffix))
    apply_catalog(admin, registry, copy.topics.prefix, copy.topics.replication_factor)
    producer = Producer(client_config(settings.kafka, **{"enable.idempotence": True}))
    failed = []

    def delivered(error, message):
        if error is not None:
            failed.append(error)

    copied = defaultdict(int)
    for spec in (SOCKET_DATA, PACKETS, SOCKET_LIFECYCLE, NODE_SPANS, RESOURCES):
        for m in read_to_end(settings, spec.full_name(settings.topics.prefix)):
            if not keep(spec, m):
                continue
            producer.produce(spec.full_name(copy.topics.prefix), m.value(), m.key(), partition=m.partition(), timestamp=m.timestamp()[1],
                             on_delivery=delivered)
            copied[(spec.full_name(copy.topics.prefix), m.partition())] += 1
    assert producer.flush(30) == 0 and not failed, failed[:3]
    assert _record_counts(settings, copied) == dict(copied), "the copy is not whole"
    return copy


def _record_counts(settings, partitions):
    """(topic, partition) -> the records it holds now."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(client_config(settings.kafka, **{"group.id": f"test-{uuid.uuid4().hex[:8]}"}))
    counts = {}
    try:
        for topic, partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            counts[(topic, partition)] = high - low
    finally:
        consumer.close()
    return counts


def _assert_same_records(expected, got, exactly_once=False):
    for name, id_field in (("spans", "span_id"), ("paths", "path_id"), ("metrics.red", "metric_id"),
                           ("metrics.network", "metric_id"), ("alerts", "alert_id")):
        want = {r[id_field]: r for r in expected[name]}
        have = {r[id_field]: r for r in got[name]}  # a record re-emitted after a restart is the same record
        assert len(want) == len(expected[name]), (name, "the reference run emitted one id twice")
        if exactly_once:  # committed in Kafka transactions: no record twice, even across a restart
            assert len(have) == len(got[name]), (name, len(got[name]) - len(have), "duplicates")
        assert have.keys() == want.keys(), (name, len(have), len(want), sorted(have.keys() ^ want.keys())[:5])
        differing = [k for k in want if want[k] != have[k]]
        assert not differing, (name, len(differing), [(k, {f: (v, have[k][f]) for f, v in want[k].items() if v != have[k][f]},
                                                        {f: want[k][f] for f in ("tap_side", "host", "pid", "start_time", "end_time", "endpoint")
                                                         if f in want[k]}) for k in differing[:6]])


# the Flink job ----------------------------------------------------------------------------------------------
def _flink_command(app_id, checkpoints, *extra):
    return [sys.executable, "-m", "cli.main", "streams", "flink", "--bounded", "--app-id", app_id, "--parallelism", "2",
            "--checkpoint-interval-s", "1", "--checkpoint-dir", str(checkpoints), "--trace-gap-s", "1", "--idle-flush-s", "4",
            "--window-s", "10", "--slow-ms", "1000", *extra]


def _run_flink(settings, app_id, checkpoints, *extra, timeout_s=400, extra_env=None):
    env = dict(os.environ, TRACETAP_TOPICS__PREFIX=settings.topics.prefix, **(extra_env or {}))
    done = subprocess.run(_flink_command(app_id, checkpoints, *extra), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0 and "finished in" in done.stdout, (done.stdout[-2000:], done.stderr[-4000:])
    return done.stdout


@pytest.fixture(scope="module")
def flink_job(job, registry, admin, tmp_path_factory):
    settings = _copy_input(job["settings"], admin, registry, "flink.")
    app_id = f"tt-flink-{uuid.uuid4().hex[:6]}"
    _run_flink(settings, app_id, tmp_path_factory.mktemp("flink-checkpoints"), "--parallelism", "1")
    return {"settings": settings, **_outputs(settings, registry)}


def test_flink_emits_the_records_faust_emits_id_for_id_and_field_for_field(job, flink_job):
    """At parallelism 1 here; 2 in the kill/restore test, 4 on the session cluster."""
    assert len(flink_job["spans"]) > 10_000 and flink_job["alerts"]  # the whole workload, findings included
    _assert_same_records(job, flink_job, exactly_once=True)


def test_flink_dead_letters_what_faust_dead_letters_with_the_same_reasons(job, flink_job, registry):
    def letters(settings):
        prefix = settings.topics.prefix
        return sorted((d["reason"], d["source_topic"].removeprefix(prefix), d["source_partition"], d["source_offset"])
                      for d in _dead_letters(settings, registry))

    from_faust = letters(job["settings"])
    assert len(from_faust) == LATE + 1 + len(CRAFTED)
    assert letters(flink_job["settings"]) == from_faust
    _assert_crafted_dead_lettered(flink_job["settings"], _dead_letters(flink_job["settings"], registry), "tracetap streams flink")


def test_a_flink_job_killed_mid_stream_and_restored_from_its_checkpoint_commits_the_same_records(job, registry, admin, tmp_path):
    settings = _copy_input(job["settings"], admin, registry, "flink-kill.")
    app_id, checkpoints = f"tt-flink-kill-{uuid.uuid4().hex[:6]}", tmp_path / "checkpoints"
    env = dict(os.environ, TRACETAP_TOPICS__PREFIX=settings.topics.prefix)
    with tempfile.TemporaryFile("w+") as log:
        first = subprocess.Popen(_flink_command(app_id, checkpoints), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not list(checkpoints.glob("*/chk-*/_metadata")):  # killed once a checkpoint is complete
                assert first.poll() is None and time.monotonic() < deadline, "no checkpoint before the job ended"
                time.sleep(0.2)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        log.seek(0)
        assert "finished in" not in log.read()
    committed = _outputs(settings, registry)
    # killed mid-stream: not everything was committed yet (on a quick run every span may be, at the first checkpoint,
    # but not the windows and traces the idle flush emits after the input ends)
    outputs = ("spans", "paths", "metrics.red", "metrics.network", "alerts")
    assert any(len(committed[topic]) < len(job[topic]) for topic in outputs), {t: len(committed[t]) for t in outputs}
    # Restored as a streaming job (a bounded Kafka source restored from a checkpoint never finishes, FLINK-31006):
    # the rest of the input, then the idle flush, then the commit at the next checkpoint.
    command = [c for c in _flink_command(app_id, checkpoints, "--from-checkpoint", "latest") if c != "--bounded"]
    flink_logs = tmp_path / "restored-flink-log"
    with tempfile.TemporaryFile("w+") as log:
        restored = subprocess.Popen(command, cwd=REPO, env=dict(env, FLINK_LOG_DIR=str(flink_logs)), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while True:
                time.sleep(3)
                got = _outputs(settings, registry)
                if all(len(got[topic]) >= len(job[topic]) for topic in outputs):
                    break  # every stage has flushed what it held (the series stage's windows key by key)
                if restored.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"the restored job did not commit every record in time: {_shortfall(job, got)}\n"
                                f"{_lost(settings, registry, job, committed, got)}\n"
                                f"{log.read()[-2000:]}\n{_flink_log_tail(flink_logs)}")
            time.sleep(3)  # anything more (a duplicate) would be committed by now
            log.seek(0)
            assert "restoring from" in log.read()
        finally:
            os.killpg(restored.pid, signal.SIGKILL)
            restored.wait()
    _assert_same_records(job, _outputs(settings, registry), exactly_once=True)


def _shortfall(expected, got):
    """Per output topic: how many records came of how many, and what the missing ones were."""
    lines = []
    for topic in ("spans", "paths", "metrics.red", "metrics.network", "alerts"):
        id_field = "span_id" if topic == "spans" else "path_id" if topic == "paths" else "alert_id" if topic == "alerts" else "metric_id"
        have = {r[id_field] for r in got[topic]}
        missing = [r for r in expected[topic] if r[id_field] not in have]
        lines.append(f"{topic}: {len(got[topic])} of {len(expected[topic])}, missing {len(missing)}")
        for r in missing[:5]:
            lines.append("  " + ", ".join(f"{k}={r.get(k)!r}" for k in ("tap_side", "protocol", "endpoint", "start_time", "window_start",
                                                                      "server_port", "request_count") if k in r))
    return "\n".join(lines)


_ID_FIELDS = {"spans": "span_id", "paths": "path_id", "alerts": "alert_id", "metrics.red": "metric_id", "metrics.network": "metric_id"}


def _lost(settings, registry, expected, before_restore, got):
    """Where the records that never came belong: whether an open or aborted transaction holds them (the job
    made them, the sink lost them) or not (the job never made them), and for spans their sockets."""
    decode = AvroDeserializer(registry)
    lines = []
    for spec in (SPANS, PATHS, RED_METRICS, NETWORK_METRICS, ALERTS):
        field = _ID_FIELDS[spec.name]
        have = {r[field] for r in got[spec.name]}
        missing = [r for r in expected[spec.name] if r[field] not in have]
        if not missing:
            continue
        written = {decode(m.value())[field] for m in read_until_idle(settings, spec.full_name(settings.topics.prefix), idle_s=2,
                                                                    isolation="read_uncommitted")}
        lines.append(f"{spec.name}: {len(missing)} lost, {sum(r[field] in written for r in missing)} of them written but not committed; "
                     f"{len(before_restore[spec.name])} committed before the restore")
        if spec is SPANS:
            per_socket = defaultdict(lambda: [0, 0])
            for r in expected["spans"]:
                per_socket[(r["client_port"], r["protocol"])][0] += 1
            for r in missing:
                per_socket[(r["client_port"], r["protocol"])][1] += 1
            sockets = sorted(((k, v) for k, v in per_socket.items() if v[1]), key=lambda kv: -kv[1][1])
            lines.append(f"  on {len(sockets)} sockets, lost of each socket's spans: "
                         + ", ".join(f"{port}/{protocol} {lost} of {total}" for (port, protocol), (total, lost) in sockets[:12]))
    return "\n".join(lines)


def _flink_log_tail(logs, lines=40):
    """What a mini-cluster's log says about a job that did not get there: its errors and the tracetap lines, then its last lines."""
    text = "\n".join(p.read_text(errors="replace") for p in sorted(logs.glob("*.log"))).splitlines()
    notable = [line for line in text if " ERROR " in line or "Exception" in line or ("flink_job.py" in line and "advance app_id" not in line)]
    return "\n".join(notable[-lines:] + ["..."] + text[-lines:])


def _records_per_subtask(rest, job_id):
    """Records each subtask of each stage read (the session cluster's REST API)."""
    def get(path):
        with urllib.request.urlopen(f"http://127.0.0.1:{rest}{path}", timeout=5) as response:
            return json.load(response)

    return {vertex["name"].split(" -> ")[0]: [t["metrics"]["read-records"] for t in get(f"/jobs/{job_id}/vertices/{vertex['id']}")["subtasks"]]
            for vertex in get(f"/jobs/{job_id}")["vertices"] if "stage" in vertex["name"]}


def test_the_same_job_submitted_to_a_session_cluster_at_parallelism_4_runs_every_stage_at_4_and_emits_the_same_records(
        job, registry, admin, tmp_path):
    """A standalone session cluster (a JobManager and a TaskManager, started by infra/flink-cluster.sh as compose
    starts them) and `tracetap streams flink --target remote --parallelism 4`: the job graph and its jars travel
    over REST, the TaskManager's own Python workers run the stages, and the job graph the REST API reports has
    no vertex at parallelism 1: no stage is global. The flows and conversations spread over the 4 subtasks."""
    settings = _copy_input(job["settings"], admin, registry, "flink-remote.")
    rest, rpc, tm_rpc, blob, data = (free_port() for _ in range(5))
    properties = "\n".join([
        "jobmanager.rpc.address: 127.0.0.1", f"jobmanager.rpc.port: {rpc}", f"rest.port: {rest}", "rest.address: 127.0.0.1",
        "rest.bind-address: 127.0.0.1", f"blob.server.port: {blob}", "taskmanager.host: 127.0.0.1", f"taskmanager.rpc.port: {tm_rpc}",
        f"taskmanager.data.port: {data}", "taskmanager.numberOfTaskSlots: 4", "jobmanager.memory.process.size: 1024m",
        "taskmanager.memory.process.size: 2560m", "  # a comment line, as compose files have them"])
    env = dict(os.environ, FLINK_PROPERTIES=properties, PYTHON=sys.executable)
    cluster = []
    try:
        for role in ("jobmanager", "taskmanager"):
            cluster.append(subprocess.Popen(["bash", str(REPO / "infra" / "flink-cluster.sh"), role], env=dict(env, FLINK_LOG_DIR=str(tmp_path / role)),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 120
        while True:  # the TaskManager has registered its slots
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{rest}/overview", timeout=5) as response:
                    if json.load(response)["slots-total"] >= 4:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline and all(p.poll() is None for p in cluster), "the session cluster did not come up"
            time.sleep(1)
        out = _run_flink(settings, f"tt-flink-remote-{uuid.uuid4().hex[:6]}", tmp_path / "checkpoints", "--target", "remote",
                         "--jobmanager", f"127.0.0.1:{rest}", "--parallelism", "4",
                         # the idle flush is processing time: a TaskManager's Python workers on a loaded 2-core machine
                         # can hold spans longer than 4 s (once more than 8 s) between stages, and the series stage
                         # would close their windows
                         "--idle-flush-s", "15")
        assert "session cluster" in out
        with urllib.request.urlopen(f"http://127.0.0.1:{rest}/jobs/overview", timeout=5) as response:
            jobs = json.load(response)["jobs"]
        assert [j["state"] for j in jobs] == ["FINISHED"]  # it ran there, not in this process
        with urllib.request.urlopen(f"http://127.0.0.1:{rest}/jobs/{jobs[0]['jid']}", timeout=5) as response:
            vertices = {v["name"]: v["parallelism"] for v in json.load(response)["vertices"]}
        names = " ".join(vertices)
        assert all(stage in names for stage in ("flow stage", "conversation stage", "process stage", "series stage")), vertices
        assert set(vertices.values()) == {4}, vertices
        spread = _records_per_subtask(rest, jobs[0]["jid"])
        print("records read per subtask:", spread)
        for stage in ("flow stage", "conversation stage"):  # thousands of flows and conversations: every subtask has work
            counts = spread[stage]
            assert min(counts) > 0.1 * sum(counts) and max(counts) < 0.45 * sum(counts), (stage, counts)
    finally:
        for process in cluster:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    _assert_same_records(job, _outputs(settings, registry), exactly_once=True)
