"""How often protocol detection claims bytes that are not its protocol (not a test, not in CI; no servers).

Detection runs on the first bytes an agent sees of a socket, on any port and mid-connection, so any chunk of any
conversation can be the one it reads. Per detector and through the registry (on an ephemeral port, 40000, which
names no protocol), it counts claims on:

- random bytes: 64-byte chunks, and chunks of a random length from 5 to 4,096 bytes;
- recorded TLS: every chunk (both directions, handshake and application data) of HTTPS conversations between a
  Python `ssl` client and server through a relay, recorded in this run (TLS 1.3 and 1.2, requests and responses of
  several sizes); the kernel rule ships none of the handshake, the core sees the application-data records;
- the recorded conversations of every protocol the core knows (tests/parser_seeds.py, real clients and servers,
  HTTP/2 and gRPC among them): claims by another protocol are false positives, and the baseline is how many of a
  protocol's own client first messages its detector claims (the true positives).

    .venv/bin/python benchmarks/detection.py --random 200000
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzzing import PROTOCOLS  # noqa: E402
from tests.parser_seeds import SEEDS  # noqa: E402
from tests.recording import RecordingRelay  # noqa: E402
from tracetap.protocols import REGISTRY, detect  # noqa: E402

PORT = 40000


def tls_chunks(conversations: int = 40) -> list[bytes]:
    """Every chunk of HTTPS conversations recorded through a relay (self-signed certificate made for the run)."""
    with tempfile.TemporaryDirectory() as tmp:
        key, cert = f"{tmp}/key.pem", f"{tmp}/cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
                        "-subj", "/CN=localhost"], check=True, capture_output=True)
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(cert, key)
        listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=_serve, args=(listener, server_context), daemon=True).start()
        relay = RecordingRelay(listener.getsockname()[1])
        rng = random.Random(7)
        for i in range(conversations):
            client_context = ssl.create_default_context(cafile=cert)
            if i % 2:
                client_context.maximum_version = ssl.TLSVersion.TLSv1_2
            with socket.create_connection(("127.0.0.1", relay.port)) as raw, client_context.wrap_socket(raw, server_hostname="localhost") as tls:
                for _ in range(5):
                    body = os.urandom(rng.choice((0, 10, 300, 5000)))
                    tls.sendall(b"POST /orders HTTP/1.1\r\nHost: shop\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                    tls.recv(65536)
        relay.close()
        listener.close()
        return [data for connection in relay.connections() for _, data in connection]


def _serve(listener: socket.socket, context: ssl.SSLContext) -> None:
    while True:
        try:
            raw, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_answer, args=(context.wrap_socket(raw, server_side=True),), daemon=True).start()


def _answer(tls: ssl.SSLSocket) -> None:
    with tls:
        try:
            while tls.recv(65536):
                size = random.choice((2, 200, 3000))
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)
        except (OSError, ssl.SSLError):
            pass


def claims(chunks: list[bytes], l4: str = "TCP") -> tuple[Counter, Counter]:
    """(claims per detector called alone, claims through the registry) over the chunks."""
    alone, registry = Counter(), Counter()
    for data in chunks:
        for protocol in REGISTRY[l4]:
            if protocol.detect(data, PORT):
                alone[protocol.name] += 1
        found = detect(l4, data, PORT)
        if found is not None:
            registry[found.name] += 1
    return alone, registry


def report(title: str, total: int, alone: Counter, registry: Counter) -> None:
    print(f"\n{title}: {total:,} chunks")
    for protocol in REGISTRY["TCP"]:
        print(f"  {protocol.name:<10} alone {alone[protocol.name]:>7,} ({alone[protocol.name] / total:.4%})   "
              f"through the registry {registry[protocol.name]:>7,} ({registry[protocol.name] / total:.4%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random", type=int, default=200_000, help="random chunks of each kind (default 200,000)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    print(f"random bytes, {args.random:,} chunks of each kind (seed {args.seed})", flush=True)
    for title, chunks in (("random 64 B", [rng.randbytes(64) for _ in range(args.random)]),
                          ("random 5..4096 B", [rng.randbytes(rng.randint(5, 4096)) for _ in range(args.random)])):
        report(title, len(chunks), *claims(chunks))

    tls = tls_chunks()
    report("recorded TLS (every chunk, both directions)", len(tls), *claims(tls))

    print("\nrecorded conversations (tests/parser_seeds.py): chunks claimed by another protocol; own first messages claimed")
    for name, connections in sorted(SEEDS.items()):
        l4 = "UDP" if name == "DNS-UDP" else "TCP"
        chunks = [data for connection in connections for _, data in connection]
        wrong = sum(1 for data in chunks if (found := detect(l4, data, PORT)) is not None and found is not PROTOCOLS[name])
        firsts = [next(data for to_server, data in connection if to_server) for connection in connections]
        own = sum(1 for data in firsts if detect(l4, data, PORT) is PROTOCOLS[name])
        print(f"  {name:<11} {len(chunks):>4} chunks, claimed by another protocol: {wrong}; first client messages claimed: {own}/{len(firsts)}")


if __name__ == "__main__":
    main()
