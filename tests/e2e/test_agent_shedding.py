"""The eBPF agent over its CPU budget: real redis-benchmark load on a real redis-server, far more events
than a tenth of a core can handle, and a small ring buffer, so the kernel loses events and the agent
sheds flows. Every span it still emits must be a whole exchange, and everything left out is counted."""

import os
import re
import signal
import subprocess
import time

import pytest

from schemas.catalog import AGENT_STATS, NODE_SPANS, SOCKET_DATA
from schemas.serde import AvroDeserializer
from tests.e2e.test_ebpf_agent import _start_agent
from tests.kafka_helpers import read_until_idle
from tests.recording import free_port

BUDGET_CORES = 0.1
LOAD_S = 8.0


@pytest.fixture(scope="module")
def overloaded(own_topics, registry):
    settings = own_topics
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    agent = load = None
    try:
        agent = _start_agent(settings, {"TRACETAP_AGENT__CPU_BUDGET_CORES": str(BUDGET_CORES),
                                        "TRACETAP_AGENT__RING_BUFFER_PAGES": "8"})
        cgroup = _agent_cgroup(agent.pid)
        load = subprocess.Popen(["redis-benchmark", "-p", str(port), "-c", "16", "-n", "100000000", "-r", "1000", "-t", "set,get", "-q"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(LOAD_S)
        stopped_ns = time.time_ns()
        load.send_signal(signal.SIGINT)  # the load ends before the agent; its connections close with their last requests open
        load.wait(10)
        time.sleep(1.0)
        agent.send_signal(signal.SIGINT)
        out, err = agent.communicate(timeout=90)
        assert agent.returncode == 0, err[-2000:]
    finally:
        for proc in (load, agent):
            if proc is not None and proc.poll() is None:
                proc.kill()
        redis.terminate()
        redis.wait(10)
    decode = AvroDeserializer(registry)
    prefix = settings.topics.prefix
    spans = [decode(m.value()) for m in read_until_idle(settings, NODE_SPANS.full_name(prefix))]
    return {"spans": [s for s in spans if s["server_port"] == port], "summary": out.splitlines()[-1], "cgroup": cgroup, "stopped_ns": stopped_ns,
            "stats": [decode(m.value()) for m in read_until_idle(settings, AGENT_STATS.full_name(prefix))],
            "raw": read_until_idle(settings, SOCKET_DATA.full_name(prefix), idle_s=1), "log": err}


def _agent_cgroup(pid):
    for line in open(f"/proc/{pid}/cgroup"):
        hierarchy, controllers, path = line.strip().split(":", 2)
        if "cpu" in controllers.split(",") or hierarchy == "0" and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            return path
    return None


def _totals(summary):
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", summary)}


def test_the_agent_runs_under_a_cfs_quota_of_its_budget(overloaded):
    assert overloaded["cgroup"].endswith("/tracetap-agent-" + overloaded["cgroup"].rsplit("-", 1)[1])
    assert not os.path.exists(f"/sys/fs/cgroup/cpu{overloaded['cgroup']}")  # removed when the agent exited


def test_the_overload_is_real_events_were_lost_and_flows_shed(overloaded):
    totals = _totals(overloaded["summary"])
    ratio = float(re.search(r"lowest sample ratio ([\d.]+)", overloaded["summary"])[1])
    assert totals.get("data_lost", 0) > 0, overloaded["summary"]  # the ring buffer overflowed before shedding caught up
    assert totals.get("shed_requests", 0) > 0 and totals.get("shed_events", 0) > totals["shed_requests"]
    assert ratio < 1.0
    assert len(overloaded["spans"]) >= 200  # and the flows kept still gave spans


def test_every_span_emitted_under_overload_is_a_whole_exchange(overloaded):
    incomplete = [s for s in overloaded["spans"]
                  if s["error_class"] is not None or s["connection_closed"] or s["response_bytes"] <= 0 or s["request_bytes"] <= 0]
    # redis-benchmark, interrupted, closes its 16 connections with a request in flight on each: the client's view of
    # those says so (a close, as the stream jobs report it). Nothing else is incomplete.
    closed_by_client = [s for s in incomplete if s["connection_closed"] and s["tap_side"] == "CLIENT_PROCESS" and s["response_bytes"] == 0
                        and s["start_time"] >= overloaded["stopped_ns"] - 1_000_000_000]
    assert len(closed_by_client) <= 16
    assert [s for s in incomplete if s not in closed_by_client] == [], incomplete[:3]
    assert {s["request_type"] for s in overloaded["spans"]} <= {"SET", "GET", "CONFIG"}
    # A lost event's exchange is dropped and counted, never reported as a timeout or a cut connection.
    assert _totals(overloaded["summary"]).get("requests_cut_by_loss", 0) > 0


def test_spans_say_which_share_of_flows_they_stand_for(overloaded):
    ratios = {s["sample_ratio"] for s in overloaded["spans"]}
    assert all(0 < r <= 1 for r in ratios) and min(ratios) < 1.0


def test_both_ends_of_a_kept_flow_are_kept(overloaded):
    # The client and the server hash the same client endpoint, so a flow is kept at both ends or at neither.
    sides = {}
    for s in overloaded["spans"]:
        sides.setdefault(s["tap_side"], set()).add(s["client_port"])
    client, server = sides.get("CLIENT_PROCESS", set()), sides.get("SERVER_PROCESS", set())
    assert client and server
    assert len(client & server) >= 0.8 * len(client | server), (len(client), len(server), len(client & server))


def test_agent_stats_report_the_ratio_and_what_was_shed(overloaded):
    stats = overloaded["stats"]
    assert min(r["sample_ratio"] for r in stats) < 1.0
    totals = _totals(overloaded["summary"])
    assert sum(r["counters"].get("shed_requests", 0) for r in stats) == totals["shed_requests"]


def test_the_accounting_still_adds_up(overloaded):
    totals = _totals(overloaded["summary"])
    drops = sum(totals.get(k, 0) for k in ("queue_overflow", "kafka_undelivered", "undelivered_at_exit", "invalid_records"))
    assert totals["offered"] > 0 and totals["offered"] == totals["delivered"] + drops
    assert overloaded["raw"] == []  # in-collector: spans leave the node, not raw socket data
