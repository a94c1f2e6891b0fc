"""The packet agent on real traffic between two network namespaces (a client pod and a server pod
joined by a veth pair): live capture at both NIC tap points, replay of a pcap recorded by the test,
and bad files. Expected values come from the traffic the test sends, not from the agent."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from schemas.catalog import AGENT_STATS, NODE_SPANS, PACKETS
from schemas.serde import AvroDeserializer
from tests.kafka_helpers import read_until_idle
from tests.pods import ns, veth_pods, wait_for_port

REPO = Path(__file__).resolve().parents[2]
SERVER_IP, CLIENT_IP = "10.231.7.2", "10.231.7.1"
HTTP_PORT = 8080
REDIS_PORT = 7777  # a port that names no protocol: the NIC spans come from the payload's structure
PAGE = b"hello from the server pod\n"


@pytest.fixture(scope="module")
def pods(tmp_path_factory):
    """Two namespaces joined by veth-c (client side) and veth-s (server side), an HTTP server, dnsmasq and redis in the server."""
    assert os.geteuid() == 0, "the packet agent e2e tests need root (network namespaces and live capture)"
    assert shutil.which("tshark") and shutil.which("dnsmasq") and shutil.which("redis-server"), "make setup installs tshark, dnsmasq, redis"
    processes = []
    with veth_pods(CLIENT_IP, SERVER_IP, "p") as pods:
        server = pods["server"]
        try:
            root = tmp_path_factory.mktemp("www")
            (root / "hello.txt").write_bytes(PAGE)
            processes.append(subprocess.Popen(["ip", "netns", "exec", server, sys.executable, "-m", "http.server", str(HTTP_PORT),
                                               "--bind", SERVER_IP, "--directory", str(root)],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            processes.append(subprocess.Popen(["ip", "netns", "exec", server, "dnsmasq", "--no-daemon", "--port=53", f"--listen-address={SERVER_IP}",
                                               "--bind-interfaces", "--no-resolv", "--no-hosts", "--local=/tracetap.test/",
                                               f"--address=/svc.tracetap.test/{SERVER_IP}", "--pid-file="],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            processes.append(subprocess.Popen(["ip", "netns", "exec", server, "redis-server", "--port", str(REDIS_PORT), "--bind", SERVER_IP,
                                               "--protected-mode", "no", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for_port(server, HTTP_PORT)
            wait_for_port(server, REDIS_PORT)
            yield pods
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)


_CLIENT = r"""
import http.client, socket, struct, sys
conn = http.client.HTTPConnection(sys.argv[1], 8080, timeout=5)
conn.request("GET", "/hello.txt", headers={"Host": "svc.tracetap.test"})
body = conn.getresponse().read()
conn.request("GET", "/missing", headers={"Host": "svc.tracetap.test"})
conn.getresponse().read()
conn.close()
def query(qid, name):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    s.sendto(q, (sys.argv[1], 53)); s.recv(512); s.close()
query(0x4242, "svc.tracetap.test")
query(0x4343, "nothing.tracetap.test")
redis = socket.create_connection((sys.argv[1], 7777), timeout=5)
for command in (b"*3\r\n$3\r\nSET\r\n$8\r\norder:42\r\n$4\r\npaid\r\n", b"*2\r\n$4\r\nINCR\r\n$8\r\norder:42\r\n"):
    redis.sendall(command); redis.recv(512)
redis.close()
print(len(body))
"""


def _start_agent(settings, env_extra, *args):
    env = dict(os.environ, TRACETAP_TOPICS__PREFIX=settings.topics.prefix, TRACETAP_AGENT__STATS_INTERVAL_S="2", **env_extra)
    agent = subprocess.Popen([sys.executable, "-m", "cli.main", "agent", "packets", *args], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = agent.stdout.readline()
    if "capturing" not in ready:
        agent.kill()
        raise AssertionError(f"packet agent did not start: {ready!r} {agent.stderr.read()[-2000:]}")
    return agent


@pytest.fixture(scope="module")
def live(pods, own_topics, admin, registry, tmp_path_factory):
    """Two agents on the same taps: one sending every packet's summary (`--raw`), one in-collector (the default)
    sending NIC spans, to topics of its own."""
    settings = own_topics
    assembled = _fresh_topics(settings, admin, registry)
    recording = tmp_path_factory.mktemp("pcap") / "server.pcapng"
    taps = f"{pods['veth_c']}@{pods['client']}=client-nic/frontend,{pods['veth_s']}@{pods['server']}=server-nic/backend"
    agent = _start_agent(settings, {"TRACETAP_PACKETS__TAPS": taps}, "--duration", "120", "--raw")
    in_collector = _start_agent(assembled, {"TRACETAP_PACKETS__TAPS": taps}, "--duration", "120")
    dumpcap = subprocess.Popen(["ip", "netns", "exec", pods["server"], "dumpcap", "-q", "-i", pods["veth_s"], "-w", str(recording)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not recording.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert ns(pods["client"], sys.executable, "-c", _CLIENT, SERVER_IP).stdout.strip() == str(len(PAGE))
        time.sleep(1.0)
        dumpcap.send_signal(signal.SIGTERM)
        dumpcap.wait(10)
        outs = []
        for process in (agent, in_collector):
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, err[-2000:]
            outs.append(out)
    finally:
        for process in (agent, in_collector, dumpcap):
            if process.poll() is None:
                process.kill()
    decode = AvroDeserializer(registry)
    records = [(m.key().decode() if m.key() else None, decode(m.value()))
               for m in read_until_idle(settings, PACKETS.full_name(settings.topics.prefix))]
    stats = [decode(m.value()) for m in read_until_idle(settings, AGENT_STATS.full_name(settings.topics.prefix))]
    spans = [(m.key().decode(), decode(m.value())) for m in read_until_idle(assembled, NODE_SPANS.full_name(assembled.topics.prefix))]
    return {"records": records, "stats": stats, "summary": outs[0], "recording": recording, "taps": taps, "spans": spans,
            "in_collector": outs[1], "raw_after": read_until_idle(assembled, PACKETS.full_name(assembled.topics.prefix), idle_s=1)}


def _at(live, tap_point):
    """One tap point's summaries in capture order (flows are spread over partitions)."""
    return sorted((r for _, r in live["records"] if r["tap_point"] == tap_point), key=lambda r: r["time"])


def test_both_tap_points_see_the_exchange_with_tuples_and_flags(live, pods):
    for tap_point, interface, workload in (("client-nic", pods["veth_c"], "frontend"), ("server-nic", pods["veth_s"], "backend")):
        seen = _at(live, tap_point)
        assert seen, f"nothing captured at {tap_point}"
        assert {(r["interface"], r["workload"]) for r in seen} == {(interface, workload)}
        syn = [r for r in seen if r["tcp_flags"] == 0x02]
        syn_ack = [r for r in seen if r["tcp_flags"] == 0x12]
        # http.server speaks HTTP/1.0 and closes after each response: one connection per request; then one to redis
        assert [(r["src_ip"], r["dst_ip"], r["dst_port"], r["ip_version"], r["l4_protocol"]) for r in syn] == \
            [(CLIENT_IP, SERVER_IP, HTTP_PORT, 4, "TCP")] * 2 + [(CLIENT_IP, SERVER_IP, REDIS_PORT, 4, "TCP")]
        assert sorted(r["tcp_ack"] for r in syn_ack) == sorted((r["tcp_seq"] + 1) % 2**32 for r in syn)
        assert syn[0]["ttl"] == 64 and syn[0]["ip_id"] is not None


def test_http_requests_and_responses_are_dissected_at_both_taps(live):
    for tap_point in ("client-nic", "server-nic"):
        seen = _at(live, tap_point)
        requests = [(r["http_method"], r["http_uri"], r["http_host"]) for r in seen if r["http_method"]]
        assert requests == [("GET", "/hello.txt", "svc.tracetap.test"), ("GET", "/missing", "svc.tracetap.test")]
        assert [r["http_status"] for r in seen if r["http_status"]] == [200, 404]
        plain = [r for r in seen if r["l4_protocol"] == "TCP" and not r["http_method"] and not r["http_status"]]
        assert all(r["http_uri"] is None and r["dns_query_name"] is None for r in plain), "absent fields must be null"


def test_both_taps_saw_the_same_sequence_numbers_for_the_same_bytes(live):
    def data_segments(tap_point):
        return {(r["src_port"], r["dst_port"], r["tcp_seq"], r["payload_bytes"]) for r in _at(live, tap_point)
                if r["l4_protocol"] == "TCP" and r["payload_bytes"] > 0}

    client, server = data_segments("client-nic"), data_segments("server-nic")
    assert client and client == server
    request = next(r for r in _at(live, "client-nic") if r["http_uri"] == "/hello.txt")
    response = next(r for r in _at(live, "server-nic") if r["http_status"] == 200)
    assert response["tcp_ack"] == (request["tcp_seq"] + request["payload_bytes"]) % 2**32


def test_dns_queries_and_answers_are_dissected(live):
    seen = _at(live, "server-nic")
    dns = {(r["dns_id"], r["dns_is_response"]): r for r in seen if r["dns_id"] is not None}
    assert (dns[(0x4242, False)]["dns_query_name"], dns[(0x4242, False)]["dns_query_type"]) == ("svc.tracetap.test", "A")
    answer = dns[(0x4242, True)]
    assert (answer["dns_rcode"], answer["dns_answer_count"], answer["src_port"]) == ("NOERROR", 1, 53)
    assert (dns[(0x4343, True)]["dns_rcode"], dns[(0x4343, True)]["dns_answer_count"]) == ("NXDOMAIN", 0)


def test_both_directions_of_a_flow_share_one_key(live):
    keys = {}
    for key, r in live["records"]:
        if r["l4_protocol"] == "TCP":
            keys.setdefault((min(r["src_port"], r["dst_port"]), max(r["src_port"], r["dst_port"])), set()).add(key)
    assert keys and all(len(k) == 1 for k in keys.values())
    assert all(k.startswith(f"tcp|{CLIENT_IP}|") for ks in keys.values() for k in ks)


def test_the_agent_reports_what_it_sent(live):
    delivered = len(live["records"])
    assert f"delivered={delivered}" in live["summary"]
    offered = sum(s["counters"].get("offered", 0) for s in live["stats"])
    assert offered == delivered


def test_in_collector_one_span_per_request_and_tap_leaves_the_node_not_the_packets(live, pods):
    spans = sorted(((s["tap_side"], s["protocol"], s["request_type"], s["request_resource"], s["response_code"], s["error_class"])
                    for _, s in live["spans"]), key=repr)
    per_tap = [("HTTP", "GET", "/hello.txt", 200, None), ("HTTP", "GET", "/missing", 404, "CLIENT_ERROR"),
               ("DNS", "A", "svc.tracetap.test", 0, None), ("DNS", "A", "nothing.tracetap.test", 3, "CLIENT_ERROR"),
               ("REDIS", "SET", "order:42", None, None), ("REDIS", "INCR", "order:42", None, "SERVER_ERROR")]  # not an integer
    assert spans == sorted(((side, *span) for side in ("CLIENT_NIC", "SERVER_NIC") for span in per_tap), key=repr)
    assert live["raw_after"] == []  # no packet summaries: spans only
    packets = int(live["in_collector"].split("read ")[1].split(" packets")[0])
    assert len(live["spans"]) <= 0.2 * packets and f"delivered={len(live['spans'])}" in live["in_collector"]


def test_in_collector_spans_carry_the_tuple_workload_sequence_numbers_and_flow_key_the_join_needs(live, pods):
    requests = {(r["tap_point"], r["http_uri"]): r for _, r in live["records"] if r["http_method"]}
    for key, span in live["spans"]:
        if span["protocol"] != "HTTP":
            continue
        tap_point = "client-nic" if span["tap_side"] == "CLIENT_NIC" else "server-nic"
        request = requests[(tap_point, span["request_resource"])]
        assert span["req_tcp_seq"] == request["tcp_seq"] and span["request_domain"] == "svc.tracetap.test"
        assert (span["client_ip"], span["server_ip"], span["server_port"]) == (CLIENT_IP, SERVER_IP, HTTP_PORT)
        assert span["client_port"] == request["src_port"] and key == span["flow_id"] and key.startswith(f"tcp|{CLIENT_IP}|")
        assert (span["client_workload"] if tap_point == "client-nic" else span["server_workload"]) == \
            ("frontend" if tap_point == "client-nic" else "backend")
        assert 0 < span["duration_ns"] < 2_000_000_000


def _replay(settings, *args, env=None):
    return subprocess.run([sys.executable, "-m", "cli.main", "agent", "packets", *args], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, TRACETAP_TOPICS__PREFIX=settings.topics.prefix, **(env or {})), timeout=120)


def _fresh_topics(settings, admin, registry):
    from schemas.topics import apply_catalog

    mine = dataclasses.replace(settings, topics=dataclasses.replace(settings.topics, prefix=f"{settings.topics.prefix}replay-{uuid.uuid4().hex[:6]}."))
    apply_catalog(admin, registry, mine.topics.prefix, 1)
    return mine


def _exchange(records):
    """The test's own IPv4 traffic; IPv6 neighbour chatter depends on when each capture started."""
    return sorted(({k: v for k, v in r.items() if k not in ("time", "host")} for r in records if r["ip_version"] == 4), key=repr)


def test_a_recorded_pcap_replays_to_the_same_summaries(live, pods, own_topics, admin, registry):
    mine = _fresh_topics(own_topics, admin, registry)
    result = _replay(mine, "--read", str(live["recording"]), "--tap", f"{pods['veth_s']}@{pods['server']}=server-nic/backend", "--raw")
    assert result.returncode == 0, result.stderr[-2000:]
    decode = AvroDeserializer(registry)
    replayed = [decode(m.value()) for m in read_until_idle(mine, PACKETS.full_name(mine.topics.prefix))]
    assert len(_exchange(replayed)) > 20 and _exchange(replayed) == _exchange(_at(live, "server-nic"))


def test_a_recorded_pcap_replays_in_collector_to_the_spans_of_the_live_capture(live, pods, own_topics, admin, registry):
    mine = _fresh_topics(own_topics, admin, registry)
    result = _replay(mine, "--read", str(live["recording"]), "--tap", f"{pods['veth_s']}@{pods['server']}=server-nic/backend")
    assert result.returncode == 0, result.stderr[-2000:]
    decode = AvroDeserializer(registry)
    untimed = lambda spans: sorted(({k: v for k, v in r.items() if k not in _TIMED} for r in spans), key=repr)  # noqa: E731
    replayed = untimed(decode(m.value()) for m in read_until_idle(mine, NODE_SPANS.full_name(mine.topics.prefix)))
    assert len(replayed) == 6 and replayed == untimed(r for _, r in live["spans"] if r["tap_side"] == "SERVER_NIC")


_TIMED = {"span_id", "start_time", "end_time", "duration_ns"}  # the test's dumpcap and the agent's each stamp their own packets


def test_a_truncated_packet_yields_a_flagged_summary(live, tmp_path, own_topics, admin, registry):
    cut = tmp_path / "cut.pcapng"
    subprocess.run(["editcap", "-s", "60", str(live["recording"]), str(cut)], check=True, capture_output=True)
    mine = _fresh_topics(own_topics, admin, registry)
    result = _replay(mine, "--read", str(cut), "--tap", "veth-s=server-nic", "--raw")
    assert result.returncode == 0, result.stderr[-2000:]
    decode = AvroDeserializer(registry)
    replayed = [decode(m.value()) for m in read_until_idle(mine, PACKETS.full_name(mine.topics.prefix))]
    full = [r for r in replayed if r["frame_bytes"] > 60]
    assert full and all(r["truncated"] for r in full)
    assert not any(r["truncated"] for r in replayed if r["frame_bytes"] <= 60)
    # what could be read is still there: the tuple and sequence numbers sit within the first 60 bytes
    assert all(r["src_ip"] and r["tcp_seq"] is not None for r in full if r["l4_protocol"] == "TCP")


def test_a_corrupt_pcap_is_one_clear_error(tmp_path, own_topics):
    corrupt = tmp_path / "corrupt.pcap"
    corrupt.write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(range(256)) * 2)  # a pcap magic number, then nonsense
    not_a_capture = tmp_path / "notes.txt"
    not_a_capture.write_text("not a capture\n")
    for path, complaint in ((corrupt, "doesn't support"), (not_a_capture, "isn't a capture file")):
        result = _replay(own_topics, "--read", str(path))
        assert result.returncode == 1, result.stderr
        errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
        assert len(errors) == 1 and str(path) in errors[0] and complaint in errors[0], result.stderr
        assert "Traceback" not in result.stderr


def test_a_missing_namespace_or_no_taps_is_a_config_error(own_topics):
    result = _replay(own_topics, env={"TRACETAP_PACKETS__TAPS": "eth0@no-such-ns=node-nic"})
    assert result.returncode == 78 and "no-such-ns" in result.stderr
    result = _replay(own_topics, env={"TRACETAP_PACKETS__TAPS": ""})
    assert result.returncode == 78 and "packets.taps" in result.stderr
