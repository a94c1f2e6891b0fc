"""Payload only on the first syscall of each message, for HTTP/1 and Redis: on a TCP socket whose first bytes
start such a message, a syscall in the same direction as the socket's last one continues that message (a body,
the rest of a long value) and goes out as a byte count, unless its first bytes start a message (socket_trace.c
starts_text_message: pipelined requests and responses keep their payload). Binary protocols keep every payload:
their parsers read whole responses.

`starts_text_message` and `merged` below are the rule, written out as the specification. The tests hold the
core to it (the spans from the recorded conversations of real clients and servers, tests/parser_seeds.py, are
the same whether every syscall carries its payload or only the first of each message, however the writers cut
a message's tail into syscalls), and the loaded BPF program to it, on real sockets."""

from hypothesis import given, settings
from hypothesis import strategies as st

from producers.ebpf.events import DataEventHeader
from tests.e2e.test_agent_payload_inference import capture_sender, ships_payload
from tests.parser_seeds import SEEDS
from tracetap.assembly import SocketAssembler
from tracetap.config import AgentSettings
from tracetap.model import SocketData
from tracetap.protocols import REGISTRY
from tracetap.protocols.base import Status
from tracetap.protocols.http1 import METHODS

REDIS_TYPES = b"*+-:$_,#!=(%~>|"
TCP_PROTOCOLS = ("HTTP", "REDIS", "DNS-TCP", "POSTGRESQL", "MYSQL", "KAFKA")
PORTS = {"HTTP": 8080, "REDIS": 6379, "DNS-TCP": 53, "POSTGRESQL": 5432, "MYSQL": 3306, "KAFKA": 9092}


def starts_text_message(data: bytes) -> bool:
    """The kernel's rule (starts_text_message, on a syscall's first 8 bytes), as a specification."""
    h = data[:8]
    if not h:
        return False
    if h[0] in REDIS_TYPES:
        return True
    return len(h) >= 4 and (h[:4] == b"HTTP" or any(h[:4] == (method + b" ")[:4] for method in METHODS))


def merged(syscalls: list[tuple[bool, bytes]]) -> list[tuple[bool, bytes, bool]]:
    """(direction, bytes, payload sent) of each syscall of one TCP socket under the rule."""
    first = syscalls[0][1] if syscalls else b""
    heads_only = ships_payload("TCP", first) and starts_text_message(first)
    out, last = [], None
    for egress, data in syscalls:
        out.append((egress, data, not heads_only or egress != last or starts_text_message(data)))
        last = egress
    return out


def _events(syscalls: list[tuple[bool, bytes, bool]], client_side: bool, payload_bytes: int = 1024) -> list[SocketData]:
    """The syscalls of one end of a recorded connection (client writes are egress at the client)."""
    events, t = [], 1_700_000_000_000_000_000
    seq = {True: 1000, False: 5000}
    for to_server, data, shipped in syscalls:
        egress = to_server == client_side
        t += 1_000_000
        payload = data[:payload_bytes] if shipped else b""
        events.append(SocketData("n", t, t + 1000, 7, 7, "c", 1, egress, len(data), "TCP", "10.0.0.1", 40000 if client_side else 1,
                                 "10.0.0.2", 1 if client_side else 40000, "CLIENT" if client_side else "SERVER", payload,
                                 seq[to_server], None))
        seq[to_server] += len(data)
    return events


def _spans(events: list[SocketData], port: int) -> list[dict]:
    assembler = SocketAssembler()
    spans = []
    for event in events:
        event = event._replace(local_port=port) if event.role == "SERVER" else event._replace(remote_port=port)
        spans += assembler.add(event)
    spans += assembler.expire(events[-1].end_ns + 10**9 * 60) + assembler.close(events[-1].end_ns + 10**9 * 61)
    return [s.to_record() for s in spans]


def _same_spans(name: str, syscalls: list[tuple[bool, bytes]]) -> tuple[int, int]:
    """Assert both ends give the same spans from every payload and from first payloads only; (spans, counts-only syscalls)."""
    full = [(d, data, True) for d, data in syscalls]
    rule = merged(syscalls)
    for client_side in (True, False):
        expected = _spans(_events(full, client_side), PORTS[name])
        assert _spans(_events(rule, client_side), PORTS[name]) == expected, (name, client_side)
    return len(expected), sum(not shipped for _, _, shipped in rule)


def test_the_recorded_conversations_give_the_same_spans_from_first_payloads_only():
    counted = {}
    for name in TCP_PROTOCOLS:
        spans = continued = 0
        for conversation in SEEDS[name]:
            s, c = _same_spans(name, conversation)
            spans, continued = spans + s, continued + c
        counted[name] = (spans, continued)
    assert all(spans > 0 for spans, _ in counted.values()), counted
    assert counted["HTTP"][1] > 0 and counted["REDIS"][1] >= 0, counted  # the seeds hold continuations
    assert all(counted[name][1] == 0 for name in ("DNS-TCP", "POSTGRESQL", "MYSQL", "KAFKA")), counted  # binary: every payload


def _head(name: str, to_server: bool, data: bytes) -> int:
    """Where a writer may cut a message into syscalls without cutting what a parser reads of it: after an HTTP
    header block, after a Redis command's verb and key or a reply's first line, after a binary reply's length
    prefix (and Kafka's correlation id). Binary requests (SQL text, Kafka topics, DNS questions) are not cut:
    their clients write each whole."""
    if name == "HTTP":
        end = data.find(b"\r\n\r\n")
        return len(data) if end < 0 else end + 4
    if name == "REDIS":
        at = 0
        for _ in range(5 if to_server else 1):
            end = data.find(b"\r\n", at)
            if end < 0:
                return len(data)
            at = end + 2
        return at
    if to_server or name == "DNS-TCP":
        return len(data)
    return min(len(data), {"POSTGRESQL": 5, "MYSQL": 5, "KAFKA": 12}[name])


def _last_message(name: str, to_server: bool, data: bytes) -> int:
    """Where the chunk's last message begins (a client may pipeline several in one write): a writer cuts that one's
    tail into later syscalls. A message starting inside a syscall sent as a byte count is lost (the core never
    sees its start), as in DeepFlow: pipelines written in more syscalls than messages are the rule's limit."""
    protocol = next(p for p in REGISTRY["TCP"] if p.name == name.removesuffix("-TCP"))
    parse = protocol.parse_request if to_server else protocol.parse_response
    at = 0
    while True:
        result = parse(data[at:], False)
        size = result.message.size if result.status is Status.MESSAGE and result.message is not None else None
        if not size or at + size >= len(data):
            return at
        at += size


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(TCP_PROTOCOLS), st.data())
def test_messages_cut_into_syscalls_anywhere_after_their_head_give_the_same_spans(name, data):
    conversation = data.draw(st.sampled_from(SEEDS[name]))
    syscalls = []
    for to_server, chunk in conversation:
        last = _last_message(name, to_server, chunk)
        head = last + _head(name, to_server, chunk[last:])
        cuts = sorted(set(data.draw(st.lists(st.integers(head, len(chunk)), max_size=3))) - {0, len(chunk)})
        for start, end in zip([0, *cuts], [*cuts, len(chunk)]):
            syscalls.append((to_server, chunk[start:end]))
    _same_spans(name, syscalls)


SENDER = r"""
import json, os, socket, sys
out = []
for pieces in json.loads(sys.stdin.read()):
    server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
    client = socket.create_connection(server.getsockname()); peer, _ = server.accept()
    for piece in pieces:  # one write each, in the same direction: the first starts the message
        client.sendall(bytes.fromhex(piece))
        got = 0
        while got < len(piece) // 2:
            got += len(peer.recv(65536))
    out.append(os.fstat(client.fileno()).st_ino)
    client.close(); peer.close(); server.close()
print(json.dumps(out))
"""

FIRST = b"POST /orders HTTP/1.1\r\nContent-Length: 4000\r\n\r\n"
CONTINUATIONS = [b'{"items": [1, 2, 3]}', b"0123456789" * 3, b"\r\n\r\n", b"<html>", b"GET /pipelined HTTP/1.1\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\n", b"*3\r\n$3\r\nSET\r\n", b"+OK\r\n", b"Q\x00\x00\x00\x0dselect 1\x00", b"1\x00\x00\x00\x04",
                 b"\x00\x00\x00\x2a\x00\x03\x00\x0c", b"\x15\x00\x00\x01\x03", b"\x15\x00\x00\x05\xff", b"body text goes on",
                 b"Accept: */*", b"ab", b"x", b"PUT /x HTTP/1.1\r\n", b"$5\r\nhello\r\n", b":42\r\n", b"-ERR no\r\n"]
BINARY_FIRST = next(chunk for _, chunk in SEEDS["POSTGRESQL"][0])  # a startup message: every payload goes out


def _capture(samples: list[list[bytes]], agent: AgentSettings = AgentSettings()) -> tuple[list[DataEventHeader], int, list[int], dict[str, int]]:
    return capture_sender(SENDER, [[piece.hex() for piece in pieces] for pieces in samples], agent)


def _writes(headers, pid, socket_ino):
    return [h for h in headers if h.pid == pid and h.socket_ino == socket_ino and h.direction == 1]


def test_the_kernel_sends_a_continuation_as_a_count_unless_it_starts_a_message():
    samples = [[FIRST, piece, piece] for piece in CONTINUATIONS] + [[BINARY_FIRST, piece, piece] for piece in CONTINUATIONS[:4]]
    headers, pid, sockets, counters = _capture(samples)
    sent = []
    for pieces, client in zip(samples, sockets):
        writes = _writes(headers, pid, client)
        assert [h.bytes for h in writes] == [len(p) for p in pieces]
        sent.append([h.payload_len for h in writes])
    expected = [[len(p) if shipped else 0 for _, p, shipped in merged([(True, p) for p in pieces])] for pieces in samples]
    assert sent == expected
    assert sent[-4:] == [[len(p) for p in pieces] for pieces in samples[-4:]]  # a binary protocol's socket: every payload
    assert 6 <= sum(not starts_text_message(piece) for piece in CONTINUATIONS) <= len(CONTINUATIONS) - 6  # both kinds
    assert counters["continuation_events"] >= 2 * sum(not starts_text_message(piece) for piece in CONTINUATIONS)


def test_continuation_payloads_sends_every_syscall():
    headers, pid, sockets, _ = _capture([[FIRST, CONTINUATIONS[0]]], AgentSettings(continuation_payloads=True))
    assert [h.payload_len for h in _writes(headers, pid, sockets[0])] == [len(FIRST), len(CONTINUATIONS[0])]
