"""Where the agent cannot run, it stops at start with one line saying why: no root, no BTF, no broker,
no topics."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from producers.ebpf.agent import AgentError, check_requirements
from tests.recording import free_port

REPO = Path(__file__).resolve().parents[2]


def test_without_root_the_agent_says_so_in_one_line():
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             sys.executable, "-m", "cli.main", "agent", "ebpf", "--duration", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "tracetap: the eBPF agent must run as root (it loads BPF programs and reads other processes' sockets)"]


def test_without_btf_the_agent_refuses_to_guess_struct_layouts(tmp_path):
    with pytest.raises(AgentError, match="no BTF"):
        check_requirements(btf_path=tmp_path / "vmlinux")


def _agent(*args, env, timeout_s=90):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "cli.main", "agent", *args], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, **env), timeout=timeout_s)
    return result, time.monotonic() - started


def test_with_the_broker_unreachable_the_agent_stops_at_start_with_exit_69(settings):
    """Reported: `agent ebpf --duration 5` with no broker captured, then exited 0 with delivered=0."""
    address = f"127.0.0.1:{free_port()}"
    result, seconds = _agent("ebpf", "--duration", "5", env={"TRACETAP_KAFKA__BOOTSTRAP_SERVERS": address})
    assert result.returncode == 69, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"tracetap: Kafka at {address} did not answer within 10 s (Connect to ipv4#{address} failed: Connection refused): is it running "
        "(`tracetap stack status` for the local stack), and are kafka.bootstrap_servers and kafka.security_protocol (PLAINTEXT) right?"]
    assert "capturing" not in result.stdout and seconds < 30  # it stopped before loading anything


def test_before_topics_apply_the_packet_agent_names_the_missing_topics_and_the_fix(settings, tmp_path):
    """Reported: `agent packets --read FILE` before `tracetap topics apply` waited 30 s, then exited 0 with delivered=0."""
    pcap = tmp_path / "any.pcap"
    pcap.write_bytes(b"\xd4\xc3\xb2\xa1")  # the check comes before the file is read
    prefix = f"{settings.topics.prefix}not-applied."
    result, seconds = _agent("packets", "--read", str(pcap), env={"TRACETAP_TOPICS__PREFIX": prefix})
    assert result.returncode == 78, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"tracetap: 2 of the 2 topics this needs do not exist on Kafka at 127.0.0.1:9092 ({prefix}raw.spans, {prefix}agent-stats): "
        "run `tracetap topics apply` with the same settings and topics.prefix"]
    assert seconds < 15
