"""Payload only on the head of each message, for HTTP/1 and Redis: on a TCP socket whose first bytes start such a
message, each message's syscalls carry their payload until `agent.payload_bytes` bytes of it have gone by, however
the writer or reader cut it into syscalls, and the later ones (a body, the rest of a long value) go out as byte
counts. A message starts at a change of direction, or at a syscall whose first bytes start a message of the socket's
protocol (socket_trace.c starts_http_message, starts_resp_message: pipelined requests and responses keep their
payload). Binary protocols keep every payload: their parsers read whole responses.

`starts_http_message`, `starts_resp_message` and `merged` below are the rule, written out as the specification.
The tests hold the core to it (the spans from the recorded conversations of real clients and servers,
tests/parser_seeds.py, are the same whether every syscall carries its payload or only each message's head, however
the writers and readers cut the messages into syscalls), and the loaded BPF program to it, on real sockets."""

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

RESP_TYPES = b"*+-:$_,#!=(%~>|"
TCP_PROTOCOLS = ("HTTP", "REDIS", "DNS-TCP", "POSTGRESQL", "MYSQL", "KAFKA")
PORTS = {"HTTP": 8080, "REDIS": 6379, "DNS-TCP": 53, "POSTGRESQL": 5432, "MYSQL": 3306, "KAFKA": 9092}
PAYLOAD_BYTES = AgentSettings().payload_bytes


def starts_http_message(data: bytes) -> bool:
    """The kernel's starts_http_message (a syscall's first four bytes), as a specification."""
    h = data[:4]
    return len(h) == 4 and (h == b"HTTP" or any(h == (method + b" ")[:4] for method in METHODS))


def starts_resp_message(data: bytes) -> bool:
    """The kernel's starts_resp_message (a RESP type byte), as a specification."""
    return data[:1] != b"" and data[0] in RESP_TYPES


def merged(syscalls: list[tuple[bool, bytes]], budget: int = PAYLOAD_BYTES) -> list[tuple[bool, bytes, int]]:
    """(direction, bytes, payload bytes sent) of each syscall of one TCP socket under the rule, for an agent whose
    `payload_bytes` is `budget` (it also caps each syscall's payload)."""
    first = syscalls[0][1] if syscalls else b""
    starts = None
    if ships_payload("TCP", first):
        starts = starts_http_message if starts_http_message(first) else starts_resp_message if starts_resp_message(first) else None
    out, last, moved = [], None, 0
    for egress, data in syscalls:
        if egress != last:
            moved = 0
        sent = min(len(data), budget)
        if starts is not None and moved:
            if starts(data):
                moved = 0
            else:
                sent = max(0, min(sent, budget - moved))
        out.append((egress, data, sent))
        last, moved = egress, min(moved + len(data), 0xFFFF)
    return out


def _events(syscalls: list[tuple[bool, bytes, int]], client_side: bool) -> list[SocketData]:
    """The syscalls of one end of a recorded connection (client writes are egress at the client)."""
    events, t = [], 1_700_000_000_000_000_000
    seq = {True: 1000, False: 5000}
    for to_server, data, sent in syscalls:
        egress = to_server == client_side
        t += 1_000_000
        events.append(SocketData("n", t, t + 1000, 7, 7, "c", 1, egress, len(data), "TCP", "10.0.0.1", 40000 if client_side else 1,
                                 "10.0.0.2", 1 if client_side else 40000, "CLIENT" if client_side else "SERVER", data[:sent],
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


def _same_spans(name: str, syscalls: list[tuple[bool, bytes]], budget: int = PAYLOAD_BYTES) -> tuple[int, int]:
    """Assert both ends give the same spans from every syscall's payload and from the rule's; (spans, syscalls the rule cut)."""
    full = [(d, data, min(len(data), budget)) for d, data in syscalls]
    rule = merged(syscalls, budget)
    for client_side in (True, False):
        expected = _spans(_events(full, client_side), PORTS[name])
        assert _spans(_events(rule, client_side), PORTS[name]) == expected, (name, client_side, budget)
    return len(expected), sum(sent < min(len(data), budget) for _, data, sent in rule)


def test_the_recorded_conversations_give_the_same_spans_from_message_heads_only():
    counted = {}
    for name in TCP_PROTOCOLS:
        spans = continued = 0
        for conversation in SEEDS[name]:
            s, c = _same_spans(name, conversation)
            if name in ("HTTP", "REDIS"):
                # The least payload_bytes that holds the heads: the bodies after them go out as counts, or in part.
                s, c = _same_spans(name, conversation, _heads_end(name, conversation))
            spans, continued = spans + s, continued + c
        counted[name] = (spans, continued)
    assert all(spans > 0 for spans, _ in counted.values()), counted
    assert counted["HTTP"][1] > 0, counted  # the seeds hold bodies written apart from their heads
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


def _heads_end(name: str, syscalls: list[tuple[bool, bytes]]) -> int:
    """The most bytes from a change of direction to the end of the last message head before the next one: with a
    payload_bytes this large (at least the agent's least, 16), every head goes out whole."""
    runs: list[tuple[bool, bytes]] = []
    for to_server, data in syscalls:
        if runs and runs[-1][0] == to_server:
            runs[-1] = (to_server, runs[-1][1] + data)
        else:
            runs.append((to_server, data))
    ends = [last + _head(name, to_server, run[last:]) for to_server, run in runs for last in [_last_message(name, to_server, run)]]
    return max([16, *ends])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(TCP_PROTOCOLS), st.data())
def test_messages_cut_into_syscalls_anywhere_give_the_same_spans_from_their_heads(name, data):
    """HTTP and Redis messages cut anywhere, their heads too (a server reading 7 bytes at a time, a client writing
    a header per syscall); binary ones after their head (their clients write requests whole)."""
    conversation = data.draw(st.sampled_from(SEEDS[name]))
    syscalls = []
    for to_server, chunk in conversation:
        last = _last_message(name, to_server, chunk)
        head = 1 if name in ("HTTP", "REDIS") else last + _head(name, to_server, chunk[last:])
        cuts = sorted(set(data.draw(st.lists(st.integers(head, len(chunk)), max_size=6))) - {0, len(chunk)})
        for start, end in zip([0, *cuts], [*cuts, len(chunk)]):
            syscalls.append((to_server, chunk[start:end]))
    if name in ("HTTP", "REDIS"):  # binary protocols send every payload: the budget does not apply
        least = _heads_end(name, syscalls)
        _same_spans(name, syscalls, data.draw(st.one_of(st.just(least), st.integers(least, PAYLOAD_BYTES))))
    else:
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

HEAD = b"POST /orders HTTP/1.1\r\nContent-Length: 4000\r\n\r\n"
FIRST = HEAD + b"x" * PAYLOAD_BYTES  # a head and a body longer than the budget: its later syscalls go out as counts
RESP_FIRST = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$4000\r\n" + b"v" * PAYLOAD_BYTES
CONTINUATIONS = [b'{"items": [1, 2, 3]}', b"0123456789" * 3, b"\r\n\r\n", b"<html>", b"GET /pipelined HTTP/1.1\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\n", b"*3\r\n$3\r\nSET\r\n", b"+OK\r\n", b"Q\x00\x00\x00\x0dselect 1\x00", b"1\x00\x00\x00\x04",
                 b"\x00\x00\x00\x2a\x00\x03\x00\x0c", b"\x15\x00\x00\x01\x03", b"\x15\x00\x00\x05\xff", b"body text goes on",
                 b"Accept: */*", b"ab", b"x", b"PUT /x HTTP/1.1\r\n", b"$5\r\nhello\r\n", b":42\r\n", b"-ERR no\r\n"]
# Heads cut into many syscalls go out whole, up to the budget: a header per write, a secret's name and value apart,
# a body that crosses the budget (its first bytes go out, then counts), a pipelined request after it.
CUT_HEADS = [
    [b"POST /o", b"rders HTTP/1.1\r\n", b"X-Api-Key", b": ", b"s3cr3t\r\n", b"Content-Length: 3000\r\n\r\n", b"y" * 1500, b"z" * 10,
     b"GET /next HTTP/1.1\r\n", b"\r\n"],
    [b"*2\r\n$4\r\nAUTH\r\n", b"$6\r\n", b"s3cr3t", b"\r\n", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000\r\n", b"v" * 2000, b"\r\n",
     b"*1\r\n$4\r\nPING\r\n"],
]
BINARY_FIRST = next(chunk for _, chunk in SEEDS["POSTGRESQL"][0])  # a startup message: every payload goes out


def _capture(samples: list[list[bytes]], agent: AgentSettings = AgentSettings()) -> tuple[list[DataEventHeader], int, list[int], dict[str, int]]:
    return capture_sender(SENDER, [[piece.hex() for piece in pieces] for pieces in samples], agent)


def _writes(headers, pid, socket_ino):
    return [h for h in headers if h.pid == pid and h.socket_ino == socket_ino and h.direction == 1]


def test_the_kernel_sends_each_message_head_and_counts_the_rest():
    samples = ([[FIRST, piece, piece] for piece in CONTINUATIONS] + [[RESP_FIRST, piece, piece] for piece in CONTINUATIONS] + CUT_HEADS
               + [[BINARY_FIRST, piece, piece] for piece in CONTINUATIONS[:4]])
    headers, pid, sockets, counters = _capture(samples)
    sent = []
    for pieces, client in zip(samples, sockets):
        writes = _writes(headers, pid, client)
        assert [h.bytes for h in writes] == [len(p) for p in pieces]
        sent.append([h.payload_len for h in writes])
    expected = [[shipped for _, _, shipped in merged([(True, p) for p in pieces])] for pieces in samples]
    assert sent == expected
    assert sent[-4:] == [[min(len(p), PAYLOAD_BYTES) for p in pieces] for pieces in samples[-4:]]  # a binary protocol's socket
    http_cut, resp_cut = sent[-6:-4]
    assert http_cut == [7, 16, 9, 2, 8, 24, PAYLOAD_BYTES - 66, 0, 20, 2]  # the head whole, the body to the budget
    assert resp_cut == [14, 4, 6, 2, 27, PAYLOAD_BYTES - 27, 0, 14]
    # Both kinds of continuation, for each protocol: an HTTP socket's pieces that start a Redis message are counts.
    counted_http = sum(not starts_http_message(piece) for piece in CONTINUATIONS)
    counted_resp = sum(not starts_resp_message(piece) for piece in CONTINUATIONS)
    assert (counted_http, counted_resp) == (18, 16)  # of 21: both kinds, for each protocol
    assert sent[CONTINUATIONS.index(b":42\r\n")] == [PAYLOAD_BYTES, 0, 0]  # a RESP type byte on an HTTP socket
    assert counters["continuation_events"] >= 2 * (counted_http + counted_resp) + 2


def test_continuation_payloads_sends_every_syscall():
    headers, pid, sockets, _ = _capture([[FIRST, CONTINUATIONS[0]]], AgentSettings(continuation_payloads=True))
    assert [h.payload_len for h in _writes(headers, pid, sockets[0])] == [PAYLOAD_BYTES, len(CONTINUATIONS[0])]
