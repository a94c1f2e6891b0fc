"""The demo cluster's workloads, one process per pod: `python -m infra.demo_services <pod>`.

Small synchronous services (a thread per request, so the eBPF agent's thread trace ids tie a served
request to the calls it makes) that resolve each other through the cluster DNS with the pods' own
resolv.conf, as Kubernetes services do, and stage the seed's four case studies:

    web /orders/<id>  ─▶ gateway /orders/<id> ─▶ oms-app /orders/<id> ─▶ redis GET order:<id>
                                  (over TLS, port 8443) (id "slow": oms-app holds the request ~3 s) 1. slow backend
    retail /quote     ─▶ acuiagwapp /quote (~500 ms of its own)                                    2. slow service
    web /pay          ─▶ gateway /pay: resolves payment-backend, which does not exist -> 502       3. 502 from DNS
    tpp-pay-1..3      : resolve api.partner-bank.com (no trailing dot) in a loop under ndots:5     4. DNS storm

Every service also answers /health; a failed call to a dependency is answered 502 with the error, as a
gateway does. `traffic` is the clients: run in the node namespace, it sends the background requests and each
scenario's trigger requests. Nothing here knows about tracetap: it is the traffic tracetap observes.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent

PORT = 8080
TLS_PORT = 8443  # oms-app's orders API over TLS, as the gateway calls it (its /health stays on PORT)
TLS_SERVICES = ("oms-app",)
TLS_DIR: Path | None = None  # the demo's CA and the TLS services' certificates (make_certificates); None: no TLS
SLOW_BACKEND_S = 3.0
SLOW_SERVICE_S = 0.5
STORM_NAME = "api.partner-bank.com"  # no trailing dot: under ndots:5 it walks the search path first
STORM_INTERVAL_S = 0.2  # per tpp-pay pod: 5 lookups/s, each a burst of 4 queries (3 search domains, then the name)
SCENARIOS = ("slow-backend", "slow-service", "dns-502", "dns-storm")


def call(service: str, path: str, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """GET http://<service>:8080<path> (https://<service>:8443 for a TLS service), the name resolved through the cluster DNS."""
    if TLS_DIR is not None and service in TLS_SERVICES:
        context = ssl.create_default_context(cafile=str(TLS_DIR / "ca.pem"))
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(service, TLS_PORT, timeout=timeout_s, context=context)
    else:
        conn = http.client.HTTPConnection(service, PORT, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def make_certificates(directory: Path, names: dict[str, list[str]]) -> Path:
    """A CA (ca.pem) and, per service, <service>.pem and <service>.key signed by it for the given DNS names."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "demo cluster CA")])

    def certificate(subject: x509.Name, key: ec.EllipticCurvePrivateKey, ca: bool, dns: list[str]) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if dns:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns]), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(certificate(ca_name, ca_key, True, []).public_bytes(pem))
    for service, dns in names.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]), key, False, dns)
        (directory / f"{service}.pem").write_bytes(cert.public_bytes(pem))
        (directory / f"{service}.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return directory


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


def start_workloads(cluster, python: str = sys.executable, storm: bool = True,  # noqa: ANN001 (infra.cluster.Cluster)
                    tls_dir: Path | None = None) -> dict[str, subprocess.Popen]:
    """Redis (with a few orders) and every service in its pod; returns their processes once each listens. With
    `tls_dir`, oms-app's orders API is served over TLS with a certificate signed by the demo's CA (made there)."""
    redis = cluster.members["redis"].address
    if tls_dir is not None:
        make_certificates(tls_dir, {name: [name, cluster.fqdn(name)] for name in TLS_SERVICES})
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
        tls = ["--tls-dir", str(tls_dir)] if tls_dir is not None else []
        started[pod] = cluster.start(pod, [python, "-m", "infra.demo_services", pod, *tls], cwd=str(_ROOT))
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
    global TLS_DIR
    parser = argparse.ArgumentParser(prog="python -m infra.demo_services")
    parser.add_argument("pod")
    parser.add_argument("--tls-dir", type=Path, help="the demo's CA and certificates: TLS services serve, and are called, over TLS")
    args = parser.parse_args(argv[1:])
    pod, TLS_DIR = args.pod, args.tls_dir
    Service.pod = pod
    if pod.startswith("tpp-pay"):
        threading.Thread(target=storm, args=(threading.Event(),), daemon=True).start()
    if TLS_DIR is not None and pod in TLS_SERVICES:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(TLS_DIR / f"{pod}.pem", TLS_DIR / f"{pod}.key")
        secure = ThreadingHTTPServer(("0.0.0.0", TLS_PORT), Service)
        secure.daemon_threads = True
        secure.socket = context.wrap_socket(secure.socket, server_side=True)
        threading.Thread(target=secure.serve_forever, daemon=True).start()
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Service)
    server.daemon_threads = True
    print("listening", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
