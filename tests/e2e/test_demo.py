"""`tracetap demo`, run as a user runs it: the simulated cluster, the real agents, a stream job and the sink.

Each test asserts the staged faults with its own Elasticsearch queries (not the demo's report): the alert,
the span that held the time, the four-point path record, the RED window, the DNS evidence. Each demo run
writes to indices of its own and deletes its topics; the session's cleanup removes the indices.
"""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from cli.waterfall import assemble
from infra.demo_services import PODS
from sinks.elasticsearch import es_client

REPO = Path(__file__).resolve().parents[2]


def _run_demo(settings, tmp_path, name, *args):
    prefix = f"{settings.elasticsearch.index_prefix}-{name}"
    env = dict(os.environ, TRACETAP_TOPICS__PREFIX=settings.topics.prefix, TRACETAP_ELASTICSEARCH__INDEX_PREFIX=prefix)
    report = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "cli.main", "demo", "--no-stack", "--report", str(report), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    leftover = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()) & {*PODS, "tt-node"}
    assert not leftover, f"namespaces left behind: {leftover}"
    return done, prefix, report


def _search(settings, index, query, size=100):
    body = json.dumps({"size": size, "query": query}).encode()
    request = urllib.request.Request(f"{settings.elasticsearch.hosts[0]}/{index}/_search", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return [hit["_source"] for hit in json.loads(response.read())["hits"]["hits"]]


def _term(**fields):
    return {"bool": {"filter": [{"term": {k: v}} for k, v in fields.items()]}}


def _no_topics_left(admin, settings, stdout):
    run = re.search(r"demo\.([0-9a-f]{6})\.", stdout).group(1)  # the run's topics, and its stream job's own
    return not [t for t in admin.list_topics(timeout=10).topics if t.startswith((f"{settings.topics.prefix}demo.{run}.", f"tracetap-demo-{run}-"))]


def test_slow_backend_and_502_from_dns_are_found_in_elasticsearch(settings, admin, tmp_path):
    done, prefix, report = _run_demo(settings, tmp_path, "demo13", "slow-backend", "dns-502")
    assert done.returncode == 0, done.stdout[-9000:] + done.stderr[-3000:]

    # 1. The slow request: the alert names oms-app and server processing; its span and path record say the same.
    slow = _search(settings, f"{prefix}-alerts-*", _term(kind="SLOW_REQUEST"))
    assert slow, done.stdout[-3000:]
    alert = max(slow, key=lambda a: a["measurements"]["duration_ns"])
    assert alert["workload"] == "oms-app" and alert["measurements"]["duration_ns"] >= 3e9
    assert alert["attributes"]["segment"] in ("server_processing_ns", "server_own_ns")
    culprit = _search(settings, f"{prefix}-spans-*", _term(span_id=alert["attributes"]["culprit_span_id"]))
    assert culprit and culprit[0]["server_workload"] == "oms-app" and culprit[0]["tap_side"] == "SERVER_PROCESS"
    assert culprit[0]["duration_ns"] >= 3e9 and culprit[0]["request_resource"] == "/orders/slow"
    demo_es = dataclasses.replace(settings.elasticsearch, index_prefix=prefix)
    chain = assemble(es_client(demo_es), demo_es, alert["trace_id"]).spans  # one trace id per hop, the hops linked by parents
    assert {"web", "gateway", "oms-app"} <= {s["server_workload"] for s in chain}  # the whole chain, hop by hop
    paths = _search(settings, f"{prefix}-paths-*", _term(trace_id=alert["trace_id"], server_workload="oms-app"))
    four = [p for p in paths if len(p["points_seen"]) == 4]
    assert four, paths
    path = four[0]
    assert path["server_processing_ns"] >= 2.9e9  # the application held the time ...
    assert path["req_network_ns"] + path["resp_network_ns"] < 100e6  # ... not the network
    # gateway calls oms-app over TLS: both ends' spans were read from OpenSSL's plaintext, the NICs saw TLS records
    hop = [s for s in chain if s["server_workload"] == "oms-app" and s["client_workload"] == "gateway"]
    assert {(s["tap_side"], s["protocol"], s["tls"]) for s in hop} == {
        ("CLIENT_PROCESS", "HTTP", True), ("CLIENT_NIC", "TLS", True), ("SERVER_NIC", "TLS", True), ("SERVER_PROCESS", "HTTP", True)}
    # ... and the thread that served it spent the 3 s asleep: its off-CPU profile, selected by the span, says so
    profiles = [p for p in _search(settings, f"{prefix}-profiles-*", _term(kind="OFF_CPU", workload="oms-app", pid=culprit[0]["pid"]))
                if any(st["tid"] == culprit[0]["tid"] for st in p["stacks"])]
    asleep = sum(st["off_cpu_ns"] for p in profiles for st in p["stacks"]
                 if st["tid"] == culprit[0]["tid"] and "__x64_sys_clock_nanosleep_[k]" in st["stack"])
    assert 2.9e9 <= asleep <= 3.5e9, profiles

    # 3. The 502: gateway's span answered 502, and the DNS lookup under it failed for payment-backend.
    failed = _search(settings, f"{prefix}-alerts-*", _term(kind="ERROR_WITH_FAILED_DEPENDENCY"))
    assert failed, done.stdout[-3000:]
    alert = failed[0]
    assert alert["workload"] == "gateway" and alert["attributes"]["dns.name"].startswith("payment-backend")
    spans = {s["span_id"]: s for s in _search(settings, f"{prefix}-spans-*", {"terms": {"span_id": alert["span_ids"]}})}
    assert spans[alert["span_ids"][0]]["response_code"] == 502 and spans[alert["span_ids"][0]]["server_workload"] == "gateway"
    dns = [spans[i] for i in alert["span_ids"][1:] if i in spans]
    assert dns and all(s["protocol"] == "DNS" and s["response_message"] in ("NXDOMAIN", "SERVFAIL", "REFUSED") for s in dns)

    # Nothing lost: every request the client sent to web is one server span of web's (agent -> Kafka -> job -> index).
    answers = re.search(r"answers: (.*)", done.stdout).group(1)
    sent = sum(int(n) for n in re.findall(r"(\d+)x ", answers))
    count = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{settings.elasticsearch.hosts[0]}/{prefix}-spans-*/_count", headers={"Content-Type": "application/json"},
        data=json.dumps({"query": _term(server_workload="web", tap_side="SERVER_PROCESS", protocol="HTTP")}).encode())).read())["count"]
    assert sent == 105 and count == sent, answers  # 100 orders, 2 slow ones, 3 payments in 20 s

    # What the user sees: both findings, a waterfall, the HTML report with its chart; nothing left behind.
    assert done.stdout.count("[FOUND]") == 2 and "trace waterfall" in done.stdout
    page = report.read_text()
    assert "<svg" in page and "oms-app" in page and "payment-backend" in page
    assert "off-CPU: oms-app's thread" in done.stdout and "in __x64_sys_clock_nanosleep_[k]" in done.stdout
    assert page.count("class=\"tracetap-flamegraph\"") == 1 and "HTTP/TLS GET /orders/slow" in page
    assert re.search(r"oms-app: \d+ HTTP spans \(CLIENT_PROCESS \d+, SERVER_PROCESS \d+\)", done.stdout)
    assert _no_topics_left(admin, settings, done.stdout)


def test_slow_service_and_dns_storm_are_found_in_elasticsearch(settings, admin, tmp_path):
    done, prefix, report = _run_demo(settings, tmp_path, "demo24", "slow-service", "dns-storm")
    assert done.returncode == 0, done.stdout[-9000:] + done.stderr[-3000:]

    # 2. The slow service: acuiagwapp's RED p99 is ~500 ms, and the path record puts the time in it.
    red = _search(settings, f"{prefix}-metrics.red-*", _term(server_workload="acuiagwapp", tap_side="SERVER_PROCESS"))
    assert red and max(w["latency_p99_ns"] for w in red) >= 0.45e9
    assert sum(w["request_count"] for w in red) >= 20
    paths = [p for p in _search(settings, f"{prefix}-paths-*", _term(server_workload="acuiagwapp")) if len(p["points_seen"]) == 4]
    assert paths
    segments = ("req_client_stack_ns", "req_network_ns", "req_server_stack_ns", "server_processing_ns",
                "resp_server_stack_ns", "resp_network_ns", "resp_client_stack_ns")
    for path in paths:
        assert max(segments, key=lambda n: path[n] or 0) == "server_processing_ns" and path["server_processing_ns"] >= 0.45e9, (
            path, [p["req_tcp_seq"] for p in paths])

    # 4. The DNS storm: the tpp-pay pods, their rate and NXDOMAIN ratio, and the fix.
    storms = _search(settings, f"{prefix}-alerts-*", _term(kind="DNS_STORM"))
    assert storms, done.stdout[-3000:]
    assert {"tpp-pay-1", "tpp-pay-2", "tpp-pay-3"} <= {w for a in storms for w in a["workloads"]}
    worst = max(storms, key=lambda a: a["measurements"]["dns_queries_per_s"])
    assert worst["measurements"]["nxdomain_ratio"] >= 0.5 and worst["measurements"]["dns_queries_per_s"] >= 10
    assert "api.partner-bank.com" in worst["attributes"]["top_names"] and "ndots" in worst["suggestion"]

    assert done.stdout.count("[FOUND]") == 2 and "acuiagwapp" in report.read_text()
    assert _no_topics_left(admin, settings, done.stdout)


@pytest.mark.timeout(900)
def test_the_flink_job_drives_the_demo_too(settings, admin, tmp_path):
    done, prefix, _ = _run_demo(settings, tmp_path, "demoflink", "dns-502", "--engine", "flink")
    assert done.returncode == 0, done.stdout[-9000:] + done.stderr[-3000:]
    failed = _search(settings, f"{prefix}-alerts-*", _term(kind="ERROR_WITH_FAILED_DEPENDENCY"))
    assert failed and failed[0]["workload"] == "gateway" and failed[0]["attributes"]["dns.name"].startswith("payment-backend")
    assert "(flink)" in (tmp_path / "report.html").read_text()


def test_ctrl_c_stops_what_the_demo_started_and_removes_the_cluster(settings, admin):
    env = dict(os.environ, TRACETAP_TOPICS__PREFIX=settings.topics.prefix,
               TRACETAP_ELASTICSEARCH__INDEX_PREFIX=f"{settings.elasticsearch.index_prefix}-demoint")
    demo = subprocess.Popen([sys.executable, "-m", "cli.main", "demo", "--no-stack", "dns-502"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in demo.stdout:  # Ctrl-C once the agents capture and the stream job and the sink run
        seen.append(line)
        if line.startswith("6/7"):
            break
    demo.send_signal(signal.SIGINT)
    rest, _ = demo.communicate(timeout=120)
    output = "".join(seen) + rest
    assert demo.returncode == 130, output[-3000:]
    assert "interrupted: stopping the demo's processes" in output
    run = re.search(r"demo\.([0-9a-f]{6})\.", output).group(1)
    leftover = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()) & {*PODS, "tt-node"}
    assert not leftover, leftover
    processes = subprocess.run(["pgrep", "-af", f"tracetap-demo-{run}|infra.demo_services|cli.main agent"], capture_output=True, text=True).stdout
    assert not [p for p in processes.splitlines() if "pgrep" not in p], processes
    assert _no_topics_left(admin, settings, output)
