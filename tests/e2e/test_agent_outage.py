"""The eBPF agent while the broker goes away and comes back: what was captured either arrives or
is reported as dropped. The real broker is stopped and restarted mid-capture."""

import re
import socket
import time

import pytest

from infra import processes
from schemas.catalog import PROFILES, RESOURCES, SOCKET_DATA, SOCKET_LIFECYCLE
from schemas.serde import AvroDeserializer
from tests.e2e.test_ebpf_agent import _start_agent
from tests.kafka_helpers import read_until_idle

MARK = b"outage-probe-"


def _send_marked(count, start):
    """`count` UDP datagrams, each one socket data event with a numbered payload."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(start, start + count):
        sender.sendto(MARK + b"%06d" % i, receiver.getsockname())
        if i % 50 == 0:
            time.sleep(0.01)  # a steady trickle, not one burst
    sender.close()
    receiver.close()


def _run_through_outage(settings, stack, extra_env, per_phase):
    kafka = stack.components[0]
    assert kafka.name == "kafka"
    # The numbered probes are text over UDP, which no parser claims: have their payloads shipped all the same.
    agent = _start_agent(settings, {"TRACETAP_AGENT__UNKNOWN_PROTOCOL_PAYLOADS": "true", **extra_env}, raw=True)
    try:
        _send_marked(per_phase, 0)
        processes.stop(processes.read_pid(kafka.pid_file), timeout_s=60)
        _send_marked(per_phase, per_phase)  # the broker is down
        stack.up()
        _send_marked(per_phase, 2 * per_phase)
        time.sleep(2)
        agent.send_signal(2)
        out, err = agent.communicate(timeout=120)
    finally:
        if agent.poll() is None:
            agent.kill()
        stack.up()
    totals = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", out.splitlines()[-1])}
    totals["log"] = err[-3000:]
    totals["exit"] = agent.returncode
    return totals


def _received(settings, registry):
    decode = AvroDeserializer(registry)
    data = read_until_idle(settings, SOCKET_DATA.full_name(settings.topics.prefix), idle_s=4, timeout_s=120)
    others = sum(len(read_until_idle(settings, spec.full_name(settings.topics.prefix), idle_s=2, timeout_s=60))
                 for spec in (SOCKET_LIFECYCLE, RESOURCES, PROFILES))
    marks = {decode(m.value())["payload"] for m in data}
    return len(data) + others, {p for p in marks if p.startswith(MARK)}


def _dropped(totals):
    return sum(totals.get(k, 0) for k in ("queue_overflow", "kafka_undelivered", "undelivered_at_exit", "invalid_records"))


@pytest.fixture
def fresh_topics(own_topics, admin, registry, request):
    """Topics of this test alone, so every record on them is this agent run's."""
    import dataclasses

    from schemas.topics import apply_catalog

    prefix = f"{own_topics.topics.prefix}{request.node.name[-24:].replace('_', '-')}."
    mine = dataclasses.replace(own_topics, topics=dataclasses.replace(own_topics.topics, prefix=prefix))
    apply_catalog(admin, registry, prefix, 1)
    return mine


def test_a_broker_restart_loses_nothing_while_the_buffer_has_room(fresh_topics, registry, stack):
    per_phase = 300
    totals = _run_through_outage(fresh_topics, stack, {}, per_phase)
    received, marks = _received(fresh_topics, registry)
    assert marks == {MARK + b"%06d" % i for i in range(3 * per_phase)}
    assert _dropped(totals) == 0, totals["log"]
    assert received == totals["delivered"] == totals["offered"]
    assert totals["exit"] == 0, totals["log"]  # the outage was ridden out: nothing lost, nothing to report


def test_when_the_buffer_overflows_every_drop_is_counted(fresh_topics, registry, stack):
    # A tiny buffer and producer queue, so an outage must overflow them.
    env = {"TRACETAP_AGENT__BUFFER_RECORDS": "20", "TRACETAP_KAFKA__CLIENT_PROPERTIES": '{"queue.buffering.max.messages": "50"}'}
    totals = _run_through_outage(fresh_topics, stack, env, 400)
    received, marks = _received(fresh_topics, registry)
    assert totals.get("queue_overflow", 0) > 0
    assert received + _dropped(totals) == totals["offered"]
    assert len(marks) < 1200
    # It rode the outage out to the end, then its exit says records were lost, so a supervisor sees it.
    assert totals["exit"] == 69, totals["log"]
    lost = ", ".join(f"{k}={totals[k]}" for k in ("queue_overflow", "kafka_undelivered", "undelivered_at_exit") if totals.get(k))
    assert totals["log"].strip().splitlines()[-1] == (f"tracetap: {_dropped(totals)} of {totals['offered']} captured records did not "
                                                      f"reach Kafka at 127.0.0.1:9092 ({lost})")
