"""Two "pods" for the e2e tests: network namespaces joined by a veth pair, with the helpers to run in them."""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator


def ns(name: str, *cmd: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a command in a namespace; it must succeed."""
    return subprocess.run(["ip", "netns", "exec", name, *cmd], check=True, capture_output=True, text=True, **kwargs)


@contextlib.contextmanager
def veth_pods(client_ip: str, server_ip: str, tag: str) -> Iterator[dict[str, str]]:
    """A client and a server namespace (names from `tag`, two letters) joined by a veth pair on a /24:
    {"client", "server", "veth_c", "veth_s"}; both namespaces are deleted at the end."""
    run = uuid.uuid4().hex[:6]
    pods = {"client": f"tt-{tag}c-{run}", "server": f"tt-{tag}s-{run}", "veth_c": f"ttc{run}", "veth_s": f"tts{run}"}
    for name in (pods["client"], pods["server"]):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "link", "add", pods["veth_c"], "netns", pods["client"], "type", "veth", "peer", "name", pods["veth_s"],
                        "netns", pods["server"]], check=True)
        for name, dev, ip in ((pods["client"], pods["veth_c"], client_ip), (pods["server"], pods["veth_s"], server_ip)):
            ns(name, "ip", "addr", "add", f"{ip}/24", "dev", dev)
            ns(name, "ip", "link", "set", dev, "up")
            ns(name, "ip", "link", "set", "lo", "up")
        yield pods
    finally:
        for name in (pods["client"], pods["server"]):
            subprocess.run(["ip", "netns", "delete", name], check=False)


def wait_for_port(netns: str, port: int) -> None:
    """Until something listens on a TCP port in the namespace (10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if f":{port} " in ns(netns, "ss", "-ltn").stdout:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} in {netns}")
