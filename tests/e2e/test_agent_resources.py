"""Workload tags: a process in a named network namespace (a pod of the demo) is tagged with the
namespace's name; its address too; when it exits, a tombstone removes it from the compacted topic."""

import os
import subprocess
import time
import uuid

import pytest

from schemas.catalog import RESOURCES
from schemas.serde import AvroDeserializer
from tests.e2e.test_ebpf_agent import _start_agent
from tests.kafka_helpers import read_until_idle

POD_ADDRESS = "10.203.77.1"


@pytest.fixture
def pod():
    name = f"tt-pod-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", f"{POD_ADDRESS}/32", "dev", "lo"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_processes_namespaces_and_addresses_are_tagged_and_forgotten(own_topics, registry, pod):
    agent = _start_agent(own_topics, {"TRACETAP_AGENT__RESOURCE_INTERVAL_S": "1"})
    try:
        app = subprocess.Popen(["ip", "netns", "exec", pod, "sleep", "30"])
        time.sleep(3)  # at least one full scan sees it
        app.kill()
        app.wait()
        time.sleep(3)  # and one more sees it gone
    finally:
        agent.send_signal(2)
        agent.communicate(timeout=60)
    decode = AvroDeserializer(registry)
    records = [(m.key().decode(), None if m.value() is None else decode(m.value()))
               for m in read_until_idle(own_topics, RESOURCES.full_name(own_topics.topics.prefix))]
    netns_inode = None
    process_key = f"process|{os.uname().nodename}|{app.pid}"
    process = [r for k, r in records if k == process_key and r is not None]
    assert process, f"no tag for pid {app.pid}"
    assert (process[0]["comm"], process[0]["workload"], process[0]["netns_name"]) == ("sleep", pod, pod)
    netns_inode = process[0]["netns_inode"]
    assert any(r and r["kind"] == "NETNS" and r["netns_inode"] == netns_inode and r["netns_name"] == pod for _, r in records)
    assert any(r and r["kind"] == "IP_ADDRESS" and r["ip"] == POD_ADDRESS and r["workload"] == pod for _, r in records)
    assert (process_key, None) in records, "no tombstone after the process exited"
