"""One service of the test's call chain, run as its own process (so each has its own pid and threads):
`python chain_service.py PORT [DOWNSTREAM_PORT DNS_PORT]`. Paths: /order calls downstream /stock after
resolving stock.svc.test; /slow makes downstream sleep 1.2 s; /fail resolves a name that does not exist
and answers 502, like a gateway whose backend cannot be resolved."""

import http.client
import socket
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
DOWNSTREAM = int(sys.argv[2]) if len(sys.argv) > 2 else None
DNS_PORT = int(sys.argv[3]) if len(sys.argv) > 3 else None


def resolve(name: str) -> int:
    """A DNS A query over UDP to the test's dnsmasq; the answer's rcode."""
    qid = int(time.monotonic_ns() & 0xFFFF)
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(query, ("127.0.0.1", DNS_PORT))
        answer, _ = s.recvfrom(512)
    return answer[3] & 0x0F


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        status, body = 200, b"ok"
        if DOWNSTREAM is None:  # the last service: /slow holds the time
            if self.path == "/stock/slow":
                time.sleep(1.2)
        elif self.path == "/fail":
            if resolve("missing.svc.test") != 0:
                status, body = 502, b"bad gateway: missing.svc.test does not resolve"
        else:
            resolve("stock.svc.test")
            conn = http.client.HTTPConnection("127.0.0.1", DOWNSTREAM, timeout=5)
            conn.request("GET", "/stock/slow" if self.path == "/slow" else "/stock")
            body = conn.getresponse().read()
            conn.close()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("listening", flush=True)
server.serve_forever()
