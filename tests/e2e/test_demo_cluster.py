"""The demo's cluster (infra/cluster.py): network namespaces as pods on a bridge, a cluster DNS with the
Kubernetes search path and ndots, teardown that leaves nothing behind. Real namespaces, real dnsmasq,
real lookups through glibc from inside the pods."""

import subprocess

import time
from pathlib import Path

import pytest

from infra.cluster import Cluster, ClusterError

PODS = ["web", "oms-app", "kube-dns"]


def _namespaces():
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


@pytest.fixture
def cluster():
    c = Cluster(list(PODS), subnet="10.77.8.0/24", node="tt-test-node", bridge="tt-test-br0")
    c.up()
    yield c
    c.down()


def test_pods_find_each_other_by_service_name_and_talk_through_the_services_nat(cluster):
    assert {n: p.address for n, p in cluster.members.items()} == {"web": "10.77.8.10", "oms-app": "10.77.8.11", "kube-dns": "10.77.8.12"}
    assert {n: p.cluster_ip for n, p in cluster.members.items()} == {"web": "10.96.0.10", "oms-app": "10.96.0.11", "kube-dns": "10.96.0.12"}
    server = cluster.start("oms-app", ["python3", "-u", "-m", "http.server", "8080", "--bind", cluster.members["oms-app"].address],
                           stderr=subprocess.PIPE, text=True)
    probe = "import socket, time, urllib.request\n" \
            "print(socket.gethostbyname('oms-app'))\n" \
            "for _ in range(50):\n" \
            "    try:\n" \
            "        print(urllib.request.urlopen('http://oms-app:8080/', timeout=2).status); break\n" \
            "    except OSError: time.sleep(0.1)\n"
    done = cluster.run("web", ["python3", "-c", probe])
    assert done.stdout.split() == ["10.96.0.11", "200"], done.stderr  # the Service's address, answered by the pod behind it
    assert server.stderr.readline().startswith("10.77.8.10 ")  # the pod sees the client's own address: no SNAT
    links = subprocess.run(["ip", "-n", "tt-test-node", "-o", "link", "show", "master", "tt-test-br0"], capture_output=True, text=True).stdout
    assert {p.veth for p in cluster.members.values()} <= {part.split("@")[0] for part in links.split() if part.startswith("v-")}


def test_a_name_with_few_dots_walks_the_search_path_first_the_dns_storm(cluster):
    done = cluster.run("web", ["getent", "ahostsv4", "api.example.com"])
    assert done.returncode != 0  # nothing resolves it
    time.sleep(0.5)
    asked = [line.split()[-3] for line in cluster.dns_log if "query[A]" in line and cluster.members["web"].address in line]
    assert asked[:4] == ["api.example.com.default.svc.cluster.local", "api.example.com.svc.cluster.local",
                         "api.example.com.cluster.local", "api.example.com"]  # ndots:5: the search path before the name
    assert sum("NXDOMAIN" in line for line in cluster.dns_log) >= 4
    assert cluster.run("web", ["getent", "ahostsv4", "oms-app.default.svc.cluster.local."]).returncode == 0  # an FQDN: one query


def test_teardown_leaves_no_namespace_process_or_file_and_a_taken_name_is_refused():
    c = Cluster(list(PODS), subnet="10.77.7.0/24", node="tt-test-node2", bridge="tt-test-br1")
    c.up()
    dns = c.processes[0]
    assert {"tt-test-node2", *PODS} <= _namespaces()
    c.down()
    assert not ({"tt-test-node2", *PODS} & _namespaces())
    assert dns.poll() is not None and not any((Path("/etc/netns") / p).exists() for p in PODS)
    subprocess.run(["ip", "netns", "add", "web"], check=True)
    try:
        with pytest.raises(ClusterError, match="web already exist"):
            Cluster(list(PODS), node="tt-test-node3").up()
        assert "tt-test-node3" not in _namespaces() and "kube-dns" not in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "delete", "web"])

