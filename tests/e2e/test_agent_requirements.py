"""Where the agent cannot run, it stops at start with one line saying why."""

import subprocess
import sys
from pathlib import Path

import pytest

from producers.ebpf.agent import AgentError, check_requirements

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
