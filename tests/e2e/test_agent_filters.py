"""Kernel-side filters: only the included network namespace is captured, and an excluded process
name is dropped even there."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas.catalog import SOCKET_DATA
from schemas.serde import AvroDeserializer
from tests.e2e.test_agent_resources import pod  # noqa: F401  (fixture)
from tests.e2e.test_ebpf_agent import _start_agent
from tests.kafka_helpers import read_until_idle

SEND = """
import socket, sys
if len(sys.argv) > 2:
    open("/proc/self/comm", "w").write(sys.argv[2])
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(("127.0.0.1", 0))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(sys.argv[1].encode(), r.getsockname()); r.recvfrom(64)
"""


def _captured_payloads(settings, registry, agent_env, *senders):
    """Run each sender command under an agent with agent_env; the payloads it captured."""
    agent = _start_agent(settings, agent_env, raw=True)
    try:
        for command in senders:
            subprocess.run(command, check=True)
        time.sleep(1)
    finally:
        agent.send_signal(2)
        agent.communicate(timeout=60)
    decode = AvroDeserializer(registry)
    return {decode(m.value())["payload"] for m in read_until_idle(settings, SOCKET_DATA.full_name(settings.topics.prefix))}


def test_only_the_included_namespace_is_captured_and_excluded_comms_never(own_topics, registry, pod):  # noqa: F811
    payloads = _captured_payloads(
        own_topics, registry, {"TRACETAP_AGENT__INCLUDE_NETNS": pod, "TRACETAP_AGENT__EXCLUDE_COMMS": "tt-excluded"},
        ["ip", "netns", "exec", pod, sys.executable, "-c", SEND, "filter-included"],
        ["ip", "netns", "exec", pod, sys.executable, "-c", SEND, "filter-excluded-comm", "tt-excluded"],
        [sys.executable, "-c", SEND, "filter-other-netns"])
    assert b"filter-included" in payloads
    assert b"filter-excluded-comm" not in payloads
    assert b"filter-other-netns" not in payloads


@pytest.fixture
def cgroup(tmp_path):
    """A cgroup v2 directory of the test's own; mounts the v2 hierarchy where the host has v1 at /sys/fs/cgroup."""
    root = Path("/sys/fs/cgroup")
    mounted = None
    if subprocess.run(["stat", "-fc", "%T", str(root)], capture_output=True, text=True).stdout.strip() != "cgroup2fs":
        mounted = tmp_path / "cgroup2"
        mounted.mkdir()
        subprocess.run(["mount", "-t", "cgroup2", "none", str(mounted)], check=True)
        root = mounted
    group = root / f"tt-test-{os.getpid()}"
    group.mkdir()
    try:
        yield group
    finally:
        group.rmdir()
        if mounted:
            subprocess.run(["umount", str(mounted)], check=False)


def test_only_processes_in_the_included_cgroup_are_captured(own_topics, registry, cgroup):
    join = f"open({str(cgroup / 'cgroup.procs')!r}, 'w').write(str(__import__('os').getpid()))\n"
    payloads = _captured_payloads(own_topics, registry, {"TRACETAP_AGENT__INCLUDE_CGROUPS": str(cgroup)},
                                  [sys.executable, "-c", join + SEND, "cgroup-member"],
                                  [sys.executable, "-c", SEND, "cgroup-outsider"])
    assert b"cgroup-member" in payloads
    assert b"cgroup-outsider" not in payloads
