"""The demo cluster's workloads, one process per pod: `python -m infra.demo_services <pod>`.

Small synchronous services (a thread per request, so the eBPF agent's thread trace ids tie a served
request to the calls it makes) that resolve each other through the cluster DNS with the pods' own
resolv.conf, as Kubernetes services do, and stage the seed's four case studies:

    web /orders/<id>  ─▶ gateway /orders/<id> ─▶ oms-app /orders/<id> ─▶ redis GET order:<id>
                                                  (id "slow": oms-app holds the request ~3 s)      1. slow backend
    retail /quote     ─▶ acuiagwapp /quote (~500 ms of its own)                                    2. slow service
    web /pay          ─▶ gateway /pay: resolves payment-backend, which does not exist -> 502       3. 502 from DNS
    tpp-pay-1..3      : resolve api.partner-bank.com (no trailing dot) in a loop under ndots:5     4. DNS storm

Every service also answers /health; a failed call to a dependency is answered 502 with the error, as a
gateway does. `traffic` is the clients: run in the node namespace, it sends the background requests and each
scenario's trigger requests. Nothing here knows about tracetap: it is the traffic tracetap observes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent

PORT = 8080
SLOW_BACKEND_S = 3.0
SLOW_SERVICE_S = 0.5
STORM_NAME = "api.partner-bank.com"  # no trailing dot: under ndots:5 it walks the search path first
STORM_INTERVAL_S = 0.2  # per tpp-pay pod: 5 lookups/s, each a burst of 4 queries (3 search domains, then the name)
SCENARIOS = ("slow-backend", "slow-service", "dns-502", "dns-storm")


def call(service: str, path: str, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """GET http://<service>:8080<path>, the name resolved through the cluster DNS."""
    conn = http.client.HTTPConnection(service, PORT, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def redis_get(key: str) -> bytes | None:
    """One RESP GET to the redis service (a new connection, as a simple client does)."""
    with socket.create_connection(("redis", 6379), timeout=5) as s:
        s.sendall(f"*2\r\n$3\r\nGET\r\n${len(key)}\r\n{key}\r\n".encode())
        reply = s.recv(4096)
    if reply.startswith(b"$-1"):
        return None
    return reply.split(b"\r\n")[1] if reply.startswith(b"$") else reply


def resolves(name: str) -> bool:
    try:
        socket.getaddrinfo(name, PORT, socket.AF_INET, socket.SOCK_STREAM)
        return True
    except socket.gaierror:
        return False


class Service(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    pod = ""

    def do_GET(self) -> None:
        try:
            status, body = self.route(self.path)
        except Exception as exc:  # a dependency failed (refused, timed out, did not resolve): the caller gets a 502
            status, body = 502, f"bad gateway: {type(exc).__name__}: {exc}".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route(self, path: str) -> tuple[int, bytes]:
        pod = self.pod
        if path == "/health":
            return 200, b"ok"
        if pod == "web" and path.startswith("/orders/"):
            return call("gateway", path)
        if pod == "web" and path == "/pay":
            return call("gateway", path)
        if pod == "gateway" and path.startswith("/orders/"):
            return call("oms-app", path)
        if pod == "gateway" and path == "/pay":
            if not resolves("payment-backend"):
                return 502, b"bad gateway: payment-backend does not resolve"
            return call("payment-backend", path)
        if pod == "oms-app" and path.startswith("/orders/"):
            order = path.rsplit("/", 1)[-1]
            if order == "slow":
                time.sleep(SLOW_BACKEND_S)
            value = redis_get(f"order:{order}")
            return 200, b"order " + (value or b"unknown")
        if pod == "retail" and path == "/quote":
            return call("acuiagwapp", path)
        if pod == "acuiagwapp" and path == "/quote":
            time.sleep(SLOW_SERVICE_S)
            return 200, b"quote 42"
        return 404, b"no such route"

    def log_message(self, *args: object) -> None:
        pass


def storm(stop: threading.Event, interval_s: float = STORM_INTERVAL_S) -> None:
    """A tpp-pay pod's client library: looks its partner up by a relative name, again and again."""
    while not stop.is_set():
        resolves(STORM_NAME)
        stop.wait(interval_s)


PODS = ["web", "gateway", "oms-app", "retail", "acuiagwapp", "tpp-pay-1", "tpp-pay-2", "tpp-pay-3", "kube-dns", "redis"]
SERVICES = [p for p in PODS if p not in ("kube-dns", "redis")]


def start_workloads(cluster, python: str = sys.executable, storm: bool = True) -> dict[str, subprocess.Popen]:  # noqa: ANN001 (infra.cluster.Cluster)
    """Redis (with a few orders) and every service in its pod; returns their processes once each listens."""
    redis = cluster.members["redis"].address
    started = {}
    started["redis"] = cluster.start("redis", ["redis-server", "--bind", redis, "--port", "6379", "--save", "", "--appendonly", "no",
                            "--protected-mode", "no"])
    deadline = time.monotonic() + 10
    while cluster.run("redis", ["redis-cli", "-h", redis, "ping"]).stdout.strip() != "PONG":
        if time.monotonic() > deadline:
            raise RuntimeError("redis did not start in its pod")
        time.sleep(0.1)
    for order in ("1", "2", "3", "slow"):
        cluster.run("redis", ["redis-cli", "-h", redis, "set", f"order:{order}", f"paid-{order}"])
    for pod in SERVICES:
        if pod.startswith("tpp-pay") and not storm:
            continue
        started[pod] = cluster.start(pod, [python, "-m", "infra.demo_services", pod], cwd=str(_ROOT))
    for pod in SERVICES:
        if pod.startswith("tpp-pay") and not storm:
            continue
        address = cluster.members[pod].address
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection((address, PORT), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{pod} did not start listening") from None
                time.sleep(0.1)
    return started


def traffic(web: str, retail: str, scenarios: list[str], seconds: float) -> dict[str, dict[str, int]]:
    """The clients, from outside the pods (the node namespace), by address: background requests all along
    (orders through web -> gateway -> oms-app -> redis, 5/s) and each scenario's triggers spread over the run.
    Returns the answers seen, per request kind and status."""
    seen: dict[str, dict[str, int]] = {}
    lock = threading.Lock()

    def request(kind: str, host: str, path: str) -> None:
        try:
            conn = http.client.HTTPConnection(host, PORT, timeout=15)
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()  # a client that closes with the body unread makes the server's last write fail (a reset)
            status = str(response.status)
            conn.close()
        except OSError as exc:
            status = type(exc).__name__
        with lock:
            seen.setdefault(kind, {}).setdefault(status, 0)
            seen[kind][status] += 1

    plan: list[tuple[float, str, str, str]] = [(i * 0.2, "orders", web, f"/orders/{1 + i % 3}") for i in range(int(seconds / 0.2))]
    if "slow-backend" in scenarios:
        plan += [(at, "slow-backend", web, "/orders/slow") for at in (seconds * 0.15, seconds * 0.5)]
    if "slow-service" in scenarios:
        plan += [(i * 0.5, "slow-service", retail, "/quote") for i in range(int(seconds / 0.5))]
    if "dns-502" in scenarios:
        plan += [(at, "dns-502", web, "/pay") for at in (seconds * 0.1, seconds * 0.4, seconds * 0.7)]
    started = time.monotonic()
    threads = []
    for at, kind, host, path in sorted(plan):
        delay = started + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(target=request, args=(kind, host, path))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return seen


def main(argv: list[str]) -> int:
    if argv[1:2] == ["traffic"]:
        parser = argparse.ArgumentParser(prog="python -m infra.demo_services traffic")
        parser.add_argument("--web", required=True)
        parser.add_argument("--retail", required=True)
        parser.add_argument("--seconds", type=float, default=20.0)
        parser.add_argument("--scenario", action="append", default=[], choices=SCENARIOS)
        args = parser.parse_args(argv[2:])
        print(json.dumps(traffic(args.web, args.retail, args.scenario, args.seconds)), flush=True)
        return 0
    pod = argv[1]
    Service.pod = pod
    if pod.startswith("tpp-pay"):
        threading.Thread(target=storm, args=(threading.Event(),), daemon=True).start()
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Service)
    server.daemon_threads = True
    print("listening", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
