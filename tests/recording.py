"""Helpers for tests against real servers: free ports, waiting for a port, and a TCP relay that records what a real client and a real server wrote, chunk by chunk, so protocol
tests parse bytes that real software produced (not bytes the test made up)."""

import errno
import socket
import struct
import subprocess
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dnsmasq(*options: str, attempts: int = 5) -> tuple[subprocess.Popen, int]:
    """A dnsmasq on 127.0.0.1 with `options`, bound and serving; returns (process, port).

    dnsmasq binds its port for UDP and TCP both, and exits if either is taken. A port free for UDP can be some
    client's ephemeral TCP port (the suite holds many Kafka connections), so pick one free for both, and try
    another if dnsmasq still exits. No query is sent to probe it: tests count the DNS traffic they capture."""
    failures = []
    for _ in range(attempts):
        port = _free_for_tcp_and_udp()
        process = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
                                    "--listen-address=127.0.0.1", f"--port={port}", "--pid-file=", *options],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            if _udp_port_taken(port):
                return process, port
            time.sleep(0.05)
        process.kill()
        failures.append(f"port {port}: {process.communicate()[1].decode(errors='replace').strip() or 'did not bind in 10 s'}")
    raise AssertionError("dnsmasq did not start: " + "; ".join(failures))


def _free_for_tcp_and_udp() -> int:
    while True:
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue


def _udp_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    """Until something accepts connections on 127.0.0.1:port; AssertionError after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")


class RecordingRelay:
    """Listen on 127.0.0.1:<port>, forward to target; `chunks` holds (direction, bytes) in arrival order,
    direction "c2s" or "s2c", one entry per recv."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.chunks: list[tuple[str, bytes]] = []
        self._by_connection: list[list[tuple[str, bytes]]] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._by_connection.append([])
                connection = self._by_connection[-1]
            threading.Thread(target=self._pump, args=(client, server, "c2s", connection), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "s2c", connection), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str, connection: list) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.chunks.append((direction, data))
                    connection.append((direction, data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def stream(self, direction: str) -> bytes:
        with self._lock:
            return b"".join(data for d, data in self.chunks if d == direction)

    def connections(self) -> list[list[tuple[str, bytes]]]:
        """Each proxied connection's chunks, in the order the connections were accepted."""
        with self._lock:
            return [list(c) for c in self._by_connection]

    def close(self) -> None:
        self._listener.close()


class _Rewrite:
    """The client's side of a relayed connection: what the broker says goes out with its own address replaced."""

    def __init__(self, sock, advertised, relayed):
        self._sock, self._advertised, self._relayed = sock, advertised, relayed

    def sendall(self, data):
        self._sock.sendall(data.replace(self._advertised, self._relayed))

    def shutdown(self, how):
        self._sock.shutdown(how)


class BrokerRelay(RecordingRelay):
    """A RecordingRelay a client uses for every connection, not only the bootstrap one: the broker advertises
    127.0.0.1:<its port> (Metadata, FindCoordinator); the client receives the relay's port in its place (same length),
    so it comes back through the relay. The recorded bytes are the broker's, unchanged."""

    def __init__(self, broker_port):
        super().__init__(broker_port)
        self.advertised = b"127.0.0.1" + struct.pack(">i", broker_port)
        self._relayed = b"127.0.0.1" + struct.pack(">i", self.port)

    def _pump(self, src, dst, direction, connection):
        super()._pump(src, _Rewrite(dst, self.advertised, self._relayed) if direction == "s2c" else dst, direction, connection)
