"""Payload only for sockets the core can parse: the kernel looks at a socket's first captured bytes once
(socket_trace.c may_be_parsed) and sends the payload of later events only if some parser's detect could
claim those bytes; otherwise they carry byte counts only (`unknown_protocol_events`).

`ships_payload` below is the rule, written out as the specification. Two tests hold it: every recorded
first chunk of every real conversation (tests/parser_seeds.py) and random bytes that the core's detect
accepts, on any port, must be accepted by it (otherwise the counts-only socket would lose spans); and the
loaded BPF program must decide as it does, for real sockets over loopback."""

import json
import subprocess
import sys
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from producers.ebpf.agent import POLL_TIMEOUT_MS, SocketTracer
from producers.ebpf.events import DATA_HEADER_SIZE, DataEventHeader
from tests.parser_seeds import SEEDS
from tracetap.config import AgentSettings
from tracetap.protocols import all_protocols, detect

PORTS = sorted({port for protocol in all_protocols() for port in protocol.ports} | {2883, 6033, 12345, 40000})
L4 = {"DNS-UDP": "UDP"}
HTTP2_FLAGS = (0x09, 0x2D, 0, 0, 0x01, 0x0C, 0x01, 0, 0, 0x04)  # per frame type, RFC 9113 section 6


def ships_payload(l4: str, h: bytes) -> bool:
    """The kernel's rule (may_be_parsed), as a specification."""
    n = len(h)
    if l4 == "UDP":
        return n >= 12 and not h[2] & 0xF8 and h[4] == 0 and h[5] == 1
    if n >= 3 and h[0] == 0x16 and h[1] == 0x03 and h[2] <= 0x04:
        return False
    if h[:1].isalpha() or h[:1] == b"*":
        return True
    return ((n >= 5 and h[3] <= 1) or (n >= 8 and h[4:8] == b"\x00\x03\x00\x00") or (n >= 8 and h[:6] == b"\x00\x00\x00\x08\x04\xd2")
            or (n >= 14 and h[0] < 7 and h[4] == 0 and h[6] == 0) or (n >= 8 and not h[4] & 0xF8 and h[6] == 0 and h[7] == 1)
            or (n >= 9 and not h[5] & 0x80 and h[3] <= 9 and not h[4] & ~HTTP2_FLAGS[h[3]]))


def tls_handshake(l4: str, h: bytes) -> bool:
    """A TLS handshake record's header, or its first byte peeked: ciphertext, not even the first bytes go out."""
    return l4 == "TCP" and h[:1] == b"\x16" and (len(h) < 3 or (h[1] == 0x03 and h[2] <= 0x04))


def decides_to_ship(l4: str, h: bytes) -> bool:
    """The kernel's decision on a socket's first bytes (when the role does not say they are a server's): a parser
    could claim them, or they are too few to tell (the core holds them for the next ones)."""
    return not tls_handshake(l4, h) and (ships_payload(l4, h) or (l4 == "TCP" and len(h) < 16))


def test_every_first_chunk_a_parser_claims_keeps_its_payload():
    claimed = 0
    for name, conversations in SEEDS.items():
        if name == "TLS":  # TLS is read from its records at a NIC; at a socket, the OpenSSL probes send the plaintext
            continue
        l4 = L4.get(name, "TCP")
        for conversation in conversations:
            for _, chunk in conversation:  # a capture may start at any of them (pools outlive the agent)
                for port in PORTS:
                    if detect(l4, chunk, port) is not None:
                        claimed += 1
                        assert ships_payload(l4, chunk), (name, port, chunk[:32])
    assert claimed > 100  # the seeds hold every protocol's real first bytes


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(["TCP", "UDP"]), st.binary(min_size=1, max_size=48), st.sampled_from(PORTS))
def test_random_bytes_a_parser_claims_keep_their_payload(l4, data, port):
    if detect(l4, data, port) is not None:
        assert ships_payload(l4, data)


TLS_HELLO = bytes.fromhex("160301012c0100012803035d1b6f")
UNCLAIMED = bytes([0x90, 0xFF, 0x10, 0x42, 0x07, 0x08, 0x09, 0x0A]) * 4  # binary that no parser claims
SAMPLES = [
    ("TCP", b"GET /orders/42 HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("TCP", b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
    ("TCP", next(chunk for _, chunk in SEEDS["POSTGRESQL"][0])),
    ("TCP", next(chunk for _, chunk in SEEDS["MYSQL"][0])),
    ("TCP", next(chunk for client, chunk in SEEDS["KAFKA"][0] if client)),
    ("TCP", next(chunk for _, chunk in SEEDS["DNS-TCP"][0])),
    ("TCP", next(chunk for client, chunk in SEEDS["HTTP2"][-1] if client and not chunk.startswith(b"PRI"))),  # h2 frames, mid-connection
    ("TCP", TLS_HELLO + bytes(32)),
    ("TCP", b"\x16"),  # nginx peeks at a connection's first byte to tell TLS from plain HTTP
    ("TCP", UNCLAIMED),
    ("TCP", b"\x05\x01\x00"),  # a SOCKS5 greeting: too few bytes to tell, shipped for the core to hold
    ("UDP", next(chunk for _, chunk in SEEDS["DNS-UDP"][0])),
    ("UDP", b"GET /bench HTTP/1.1\r\n"),  # HTTP is no UDP protocol
]

SENDER = r"""
import json, os, socket, sys
out = []
for l4, hexed in json.loads(sys.stdin.read()):
    data = bytes.fromhex(hexed)
    if l4 == "TCP":
        server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
        client = socket.create_connection(server.getsockname()); peer, _ = server.accept()
        for _ in range(3):  # the first write decides; the next two show the decision
            client.sendall(data); peer.recv(65536)
    else:
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); server.bind(("127.0.0.1", 0))
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); client.connect(server.getsockname())
        for _ in range(3):
            client.send(data); server.recv(65536)
    out.append(os.fstat(client.fileno()).st_ino)  # not its port: 40 sockets in a row may get one port twice
    client.close(); server.close()
print(json.dumps(out))
"""


def _capture(samples: list[tuple[str, bytes]], settings: AgentSettings = AgentSettings()) -> tuple[list[DataEventHeader], int, list[int], dict[str, int]]:
    return capture_sender(SENDER, [(l4, data.hex()) for l4, data in samples], settings)


def capture_sender(script: str, stdin: object, settings: AgentSettings) -> tuple[list[DataEventHeader], int, list[int], dict[str, int]]:
    """Run a sender script (`stdin` as JSON on its standard input; it prints the JSON list of its client sockets'
    inodes) with the tracer loaded: (headers, the sender's pid, its client sockets, kernel counters)."""
    events = []
    tracer = SocketTracer(settings, set(), events.extend, lambda event: None)
    try:
        sender = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        sender.stdin.write(json.dumps(stdin))
        sender.stdin.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sender.poll() is None:
            tracer.poll(POLL_TIMEOUT_MS)
        tracer.drain()
        sockets = json.loads(sender.stdout.read())
        counters = tracer.kernel_counters()
    finally:
        tracer.close()
    return [DataEventHeader.from_buffer_copy(raw[:DATA_HEADER_SIZE]) for raw in events], sender.pid, sockets, counters


def _client_writes(headers: list[DataEventHeader], pid: int, socket_ino: int) -> list[DataEventHeader]:
    return [h for h in headers if h.pid == pid and h.socket_ino == socket_ino and h.direction == 1]


def test_the_kernel_sends_payload_only_for_sockets_a_parser_could_claim():
    headers, pid, sockets, counters = _capture(SAMPLES)
    decided = []
    for (l4, data), client in zip(SAMPLES, sockets):
        writes = _client_writes(headers, pid, client)
        assert [h.bytes for h in writes] == [len(data)] * 3, (l4, data[:16])
        assert writes[0].payload_len == (0 if tls_handshake(l4, data) else len(data))  # the bytes that decide go out, but TLS's
        decided.append([h.payload_len for h in writes[1:]])
    expected = [[len(data)] * 2 if decides_to_ship(l4, data) else [0, 0] for l4, data in SAMPLES]
    assert decided == expected
    assert sum(not decides_to_ship(l4, data) for l4, data in SAMPLES) == 4  # the samples hold both kinds
    assert counters["unknown_protocol_events"] >= 8  # the counts-only writes and reads of those four


def test_a_new_socket_in_a_reused_struct_sock_is_decided_afresh():
    # UDP sockets have no close event: a socket closed and a new one made at once often get the same
    # struct sock back, and must not inherit its decision (nor its event numbering).
    (dns, unknown), = [[data for l4, data in SAMPLES if l4 == "UDP"]]
    samples = [("UDP", dns if i % 2 else unknown) for i in range(40)]
    headers, pid, sockets, _ = _capture(samples)
    for (_, data), client in zip(samples, sockets):
        writes = _client_writes(headers, pid, client)
        assert [h.socket_seq for h in writes] == [1, 2, 3]
        assert [h.payload_len for h in writes] == [len(data)] + [len(data) if data == dns else 0] * 2


def test_unknown_protocol_payloads_ships_everything():
    headers, pid, sockets, _ = _capture([("TCP", UNCLAIMED), ("TCP", TLS_HELLO)], AgentSettings(unknown_protocol_payloads=True))
    assert [h.payload_len for h in _client_writes(headers, pid, sockets[0])] == [32] * 3
    assert [h.payload_len for h in _client_writes(headers, pid, sockets[1])] == [len(TLS_HELLO)] * 3


RESPONSE_FIRST = r"""
import json, os, socket, struct, sys
response, request = (bytes.fromhex(h) for h in json.loads(sys.stdin.read()))
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
client = socket.create_connection(server.getsockname()); peer, _ = server.accept()
peer.sendall(response); client.recv(65536)  # the first bytes the capture sees: the tail of an answer
for _ in range(2):
    client.sendall(request); peer.recv(65536)
print(json.dumps([os.fstat(client.fileno()).st_ino]))
client.close(); server.close()
"""


def test_a_servers_bytes_no_parser_claims_leave_the_client_to_decide():
    """A capture that starts mid-connection may start with a response (here the row packets of a MySQL result set,
    sequence 3): that does not settle the socket; the client's next request, which a parser claims, does."""
    rows = bytes.fromhex("0500000302313232") + UNCLAIMED
    query = b"Q" + (4 + 9).to_bytes(4, "big") + b"SELECT 1\0"
    assert not ships_payload("TCP", rows) and ships_payload("TCP", query)
    headers, pid, [client], _ = capture_sender(RESPONSE_FIRST, [rows.hex(), query.hex()], AgentSettings())
    events = [h for h in headers if h.pid == pid and h.socket_ino == client]
    assert [(h.direction, h.bytes, h.payload_len) for h in events] == [(0, len(rows), len(rows)), (1, len(query), len(query)),
                                                                      (1, len(query), len(query))]
