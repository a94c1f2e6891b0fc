"""A small Kubernetes-like cluster on one machine, for the demo and the tests: network namespaces as pods.

    node namespace (tt-node) ── bridge tt-br0 10.77.0.1/24, nftables DNAT: Service ClusterIP -> pod
        ├─ veth ─ pod "web"        10.77.0.10   Service 10.96.0.10 (its own network namespace, /run/netns/web)
        ├─ veth ─ pod "gateway"    10.77.0.11   Service 10.96.0.11
        └─ ...   pod "kube-dns"    runs dnsmasq: <service>.<namespace>.svc.cluster.local -> ClusterIPs

Every pod is also a Service: a ClusterIP that no interface holds, which the node namespace DNATs to the
pod as kube-proxy does (an nftables prerouting rule; bridged replies pass the node's conntrack through
br_netfilter, so the client sees the answer come from the ClusterIP). The cluster DNS answers ClusterIPs,
and the pods' resolv.conf names kube-dns by its ClusterIP, so a client's socket and its NIC see the
Service's address and the server's see the pod's, as in Kubernetes.

Each pod gets /etc/netns/<pod>/resolv.conf, which `ip netns exec` mounts over /etc/resolv.conf for the
processes it starts there: the cluster DNS, the search path `default.svc.cluster.local svc.cluster.local
cluster.local` and `options ndots:5`, as a Kubernetes pod has. So `getaddrinfo("oms-app")` in a pod
resolves the service, and a name with fewer than five dots (`api.example.com`) is tried through the
search path first: NXDOMAIN after NXDOMAIN, the seed's DNS storm.

Everything is torn down by `down()` (also after a failure half-way through `up()`, and from the
context manager on Ctrl-C): the processes started in the pods, the namespaces (their veths go with
them) and the resolv.conf files. Traffic stays inside these namespaces.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tracetap.errors import TracetapError

log = logging.getLogger("tracetap.cluster")

CLUSTER_DOMAIN = "cluster.local"
SEARCH = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")
NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")


class ClusterError(TracetapError):
    pass


@dataclass(frozen=True, slots=True)
class Pod:
    name: str  # the network namespace's name: the workload name the agents report
    address: str
    veth: str  # the node side of its veth pair (in the node namespace): where a packet agent taps the pod
    cluster_ip: str  # its Service's address, DNATed to `address` by the node namespace


@dataclass
class Cluster:
    pods: list[str]
    subnet: str = "10.77.0.0/24"
    service_subnet: str = "10.96.0.0/24"  # the Services' ClusterIPs (inside the namespaces only)
    node: str = "tt-node"
    bridge: str = "tt-br0"
    dns_pod: str = "kube-dns"
    namespace: str = "default"  # the Kubernetes namespace of the services (the first search domain)
    extra_hosts: dict[str, str] = field(default_factory=dict)  # more names the cluster DNS answers: name -> address
    members: dict[str, Pod] = field(default_factory=dict, init=False)
    dns_log: list[str] = field(default_factory=list, init=False)  # the cluster DNS's query log, line by line
    processes: list[subprocess.Popen] = field(default_factory=list, init=False)
    _created: list[str] = field(default_factory=list, init=False)  # namespaces this cluster made, to delete

    # up / down ----------------------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    def up(self) -> None:
        """Create the node namespace, its bridge, each pod with its veth and address, and the cluster DNS."""
        if os.geteuid() != 0:
            raise ClusterError("the demo cluster needs root (it creates network namespaces)")
        for tool in ("ip", "dnsmasq"):
            if shutil.which(tool) is None:
                raise ClusterError(f"{tool} not found (apt-get install iproute2 dnsmasq)")
        names = [self.node, *self.pods] if self.dns_pod in self.pods else [self.node, *self.pods, self.dns_pod]
        taken = [n for n in names if (NETNS_DIR / n).exists()]
        if taken:
            raise ClusterError(f"network namespaces {', '.join(taken)} already exist: remove them (ip netns delete NAME) "
                               "or tear down the earlier demo cluster first")
        try:
            self._build([n for n in names if n != self.node])
        except BaseException:
            self.down()
            raise

    def _build(self, pods: list[str]) -> None:
        network = ipaddress.ip_network(self.subnet)
        hosts = list(network.hosts())
        if len(pods) + 10 > len(hosts):
            raise ClusterError(f"{self.subnet} is too small for {len(pods)} pods")
        self._netns(self.node)
        self._ip(self.node, "link", "add", self.bridge, "type", "bridge")
        self._ip(self.node, "addr", "add", f"{self.gateway}/{network.prefixlen}", "dev", self.bridge)
        self._ip(self.node, "link", "set", self.bridge, "up")
        services = list(ipaddress.ip_network(self.service_subnet).hosts())
        for i, name in enumerate(pods):
            address = str(hosts[9 + i])
            veth = f"v-{name}"[:15]
            self._netns(name)
            _run(["ip", "link", "add", veth, "netns", self.node, "type", "veth", "peer", "name", "eth0", "netns", name])
            self._ip(self.node, "link", "set", veth, "master", self.bridge, "up")
            self._ip(name, "addr", "add", f"{address}/{network.prefixlen}", "dev", "eth0")
            self._ip(name, "link", "set", "eth0", "up")
            self._ip(name, "route", "add", "default", "via", self.gateway)
            self.members[name] = Pod(name, address, veth, str(services[9 + i]))
        self._services()
        dns = self.members[self.dns_pod].cluster_ip
        for name in pods:
            folder = ETC_NETNS / name
            folder.mkdir(parents=True, exist_ok=True)
            # kube-dns itself resolves through its own address, not its Service's (a pod reaching itself through a
            # ClusterIP needs a hairpin masquerade, which this cluster does not set up; kube-dns's dnsPolicy is Default)
            server = self.members[name].address if name == self.dns_pod else dns
            (folder / "resolv.conf").write_text(f"nameserver {server}\nsearch {' '.join(SEARCH)}\noptions ndots:5 timeout:2 attempts:3\n")
        self._start_dns()
        log.info("cluster up pods=%d subnet=%s dns=%s", len(pods), self.subnet, dns)

    def _services(self) -> None:
        """kube-proxy's part: forwarding on, and one DNAT rule per Service in the node namespace."""
        if not Path("/proc/sys/net/bridge").is_dir():
            raise ClusterError("br_netfilter is not loaded, so bridged replies would skip the Services' NAT: run modprobe br_netfilter")
        if shutil.which("nft") is None:
            raise ClusterError("nft not found (apt-get install nftables)")
        for setting in ("net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1"):
            _run(["ip", "netns", "exec", self.node, "sysctl", "-qw", setting])
        rules = "\n".join(f"    ip daddr {pod.cluster_ip} dnat to {pod.address}" for pod in self.members.values())
        ruleset = f"table ip tracetap-services {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{rules}\n  }}\n}}\n"
        done = subprocess.run(["ip", "netns", "exec", self.node, "nft", "-f", "-"], input=ruleset, capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterError(f"nft could not load the Services' DNAT rules: {done.stderr.strip()}")

    def _start_dns(self) -> None:
        """dnsmasq in the kube-dns pod: every pod's Service as <pod>.<namespace>.svc.cluster.local -> its ClusterIP (and its
        short forms through the search path), NXDOMAIN for anything else under cluster.local, no upstream (nothing
        leaves the cluster)."""
        records = [f"--host-record={name}.{self.namespace}.svc.{CLUSTER_DOMAIN},{pod.cluster_ip}" for name, pod in self.members.items()]
        records += [f"--host-record={name},{address}" for name, address in self.extra_hosts.items()]
        dns = self.start(self.dns_pod, ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                                  "--bind-interfaces", f"--listen-address={self.members[self.dns_pod].address}", "--port=53",
                                  "--pid-file=", "--log-queries", "--log-facility=-", f"--local=/{CLUSTER_DOMAIN}/",
                                  "--local=/example.com/", "--local=/svc/", *records],
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=lambda: self.dns_log.extend(dns.stderr), name="dnsmasq-log", daemon=True).start()
        deadline = time.monotonic() + 10
        while not self._dns_answers():
            if time.monotonic() > deadline:
                raise ClusterError("the cluster DNS (dnsmasq in kube-dns) did not answer within 10 s")
            time.sleep(0.1)

    def _dns_answers(self) -> bool:
        probe = subprocess.run(["ip", "netns", "exec", self.dns_pod, "getent", "hosts", f"{self.dns_pod}.{self.namespace}.svc.{CLUSTER_DOMAIN}"],
                               capture_output=True, text=True)
        return probe.returncode == 0

    def down(self) -> None:
        """Stop what runs in the pods, delete the namespaces and the resolv.conf files; safe to call twice."""
        for process in reversed(self.processes):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()
        for name in reversed(self._created):
            _kill_namespace_processes(name)
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
            shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
        self._created.clear()
        self.members.clear()

    # running things in pods ------------------------------------------------------------------------------
    def command(self, pod: str, argv: list[str]) -> list[str]:
        """argv as run inside the pod (its network namespace and resolv.conf)."""
        return ["ip", "netns", "exec", pod, *argv]

    def start(self, pod: str, argv: list[str], **popen: object) -> subprocess.Popen:
        """Start a process in a pod; `down()` stops it (it gets a process group of its own)."""
        popen.setdefault("stdout", subprocess.DEVNULL)
        popen.setdefault("stderr", subprocess.DEVNULL)
        process = subprocess.Popen(self.command(pod, argv), start_new_session=True, **popen)  # type: ignore[call-overload]
        self.processes.append(process)
        return process

    def run(self, pod: str, argv: list[str], timeout_s: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(pod, argv), capture_output=True, text=True, timeout=timeout_s)

    def fqdn(self, pod: str) -> str:
        return f"{pod}.{self.namespace}.svc.{CLUSTER_DOMAIN}"

    # helpers -------------------------------------------------------------------------------------------------
    def _netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._created.append(name)
        self._ip(name, "link", "set", "lo", "up")

    def _ip(self, netns: str, *args: str) -> None:
        _run(["ip", "-n", netns, *args])


def _kill_namespace_processes(netns: str) -> None:
    """SIGKILL whatever still runs in the namespace: a child whose spawn a Ctrl-C interrupted was never
    registered (Popen raises after the fork), and it would outlive the namespace's deletion."""
    listed = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    for pid in listed.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise ClusterError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
