"""Kernel-side filters: only the included network namespace is captured, and an excluded process
name is dropped even there."""

import socket
import subprocess
import sys
import time

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


def test_only_the_included_namespace_is_captured_and_excluded_comms_never(own_topics, registry, pod):  # noqa: F811
    agent = _start_agent(own_topics, {"TRACETAP_AGENT__INCLUDE_NETNS": pod, "TRACETAP_AGENT__EXCLUDE_COMMS": "tt-excluded"})
    try:
        subprocess.run(["ip", "netns", "exec", pod, sys.executable, "-c", SEND, "filter-included"], check=True)
        subprocess.run(["ip", "netns", "exec", pod, sys.executable, "-c", SEND, "filter-excluded-comm", "tt-excluded"], check=True)
        subprocess.run([sys.executable, "-c", SEND, "filter-other-netns"], check=True)
        time.sleep(1)
    finally:
        agent.send_signal(2)
        agent.communicate(timeout=60)
    decode = AvroDeserializer(registry)
    payloads = {decode(m.value())["payload"] for m in read_until_idle(own_topics, SOCKET_DATA.full_name(own_topics.topics.prefix))}
    assert b"filter-included" in payloads
    assert b"filter-excluded-comm" not in payloads
    assert b"filter-other-netns" not in payloads
