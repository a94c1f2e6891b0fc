"""Hostile bytes: every registered parser, `detect`, the socket assembler and the NIC assembler never raise,
and their cost is linear (a time bound per call that a super-linear parser fails), on real messages
(tests/parser_seeds.py) mutated by truncation, byte flips, length-field corruption, splicing, huge lengths
and repetition; and the reported cases by hand."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzzing import KINDS, PORTS, PROTOCOLS, assembler_bound_s, bound_s, fastest, mutate, seed_messages, timed
from tests.parser_seeds import SEEDS
from tracetap import assembly
from tracetap.assembly import AssemblyConfig, SocketAssembler
from tracetap.model import SocketData
from tracetap.nic import FlowPacketAssembler
from tracetap.protocols import all_protocols, detect
from tracetap.protocols.base import Message, Parse, Status
from tracetap.protocols.http1 import HTTP1
from tracetap.protocols.mysql import MYSQL
from tracetap.protocols.postgres import POSTGRES
from tracetap.protocols.sql import sql_verb

NAMES = sorted(PROTOCOLS)
MESSAGES = {name: seed_messages(name) for name in NAMES}
DONORS = {name: [data for _, data in MESSAGES[name]] for name in NAMES}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OPS = st.lists(st.tuples(st.integers(0, KINDS - 1), st.integers(0, 1 << 20), st.integers(0, 1 << 20)), min_size=1, max_size=4)


def test_every_registered_protocol_has_recorded_seeds():
    assert {id(p) for p in all_protocols()} == {id(p) for p in PROTOCOLS.values()}
    for name in NAMES:
        requests = [data for is_request, data in MESSAGES[name] if is_request]
        responses = [data for is_request, data in MESSAGES[name] if not is_request]
        assert requests and responses, f"{name}: record seeds with tests/record_parser_seeds.py"


def _check(result, data):
    assert isinstance(result, Parse) and isinstance(result.status, Status)
    if result.status is Status.MESSAGE:
        assert result.message is not None and (result.message.size is None or result.message.size > 0)
    else:
        assert result.message is None


def _parse_all_ways(protocol, data, port):
    """Both parsers, final or not, and detection: none raises, each within the time bound for its input."""
    limit = bound_s(len(data))
    for call in (protocol.parse_request, protocol.parse_response):
        for final in (False, True):
            result, took = fastest(call, data, final, limit_s=limit)
            _check(result, data)
            assert took <= limit, f"{protocol.name} {call.__name__}(final={final}) took {took * 1000:.1f} ms on {len(data)} bytes"
    found, took = fastest(protocol.detect, data, port, limit_s=limit)
    assert found in (True, False) and took <= limit


@pytest.mark.parametrize("name", NAMES)
@given(pick=st.integers(0, 1 << 16), ops=OPS)
@FUZZ
def test_parsers_never_raise_and_stay_linear_on_mutated_real_messages(name, pick, ops):
    messages = MESSAGES[name]
    _, seed = messages[pick % len(messages)]
    _parse_all_ways(PROTOCOLS[name], mutate(seed, ops, DONORS[name]), PORTS[name])


@pytest.mark.parametrize("name", NAMES)
def test_parsers_read_every_truncation_of_every_real_message(name):
    protocol = PROTOCOLS[name]
    for is_request, seed in MESSAGES[name]:
        parse = protocol.parse_request if is_request else protocol.parse_response
        for cut in range(len(seed) + 1):
            for final in (False, True):
                _check(parse(seed[:cut], final), seed[:cut])


@given(data=st.binary(max_size=300), l4=st.sampled_from(["TCP", "UDP", "ICMP", ""]), port=st.integers(0, 65535),
       name=st.sampled_from(NAMES), pick=st.integers(0, 1 << 16), ops=OPS)
@FUZZ
def test_detect_never_raises_on_arbitrary_or_mutated_first_bytes(data, l4, port, name, pick, ops):
    _, seed = MESSAGES[name][pick % len(MESSAGES[name])]
    for first in (data, mutate(seed, ops, DONORS[name])):
        found, took = fastest(detect, l4, first, port, limit_s=bound_s(len(first)))
        assert (found is None or found in all_protocols()) and took <= bound_s(len(first))


# the socket assembler --------------------------------------------------------------------------------
def _event(to_server, payload, t, *, role, count=None, seq=None, port=80, l4="TCP", egress_is_client=True):
    egress = to_server == egress_is_client
    return SocketData("node", t, t + 10, 1, 2, "app", 3, egress, len(payload) if count is None else count, l4,
                      "10.0.0.1", 40000, "10.0.0.2", port, role, payload, seq, None)


def _feed(name, conversation, counts, role, client_side):
    """The conversation through one assembler, with `expire` after each event and `close` at the end."""
    assembler = SocketAssembler(AssemblyConfig(request_timeout_ns=500))
    sent = {True: 1000, False: 9000}
    spans = []
    for i, ((to_server, data), count) in enumerate(zip(conversation, counts)):
        t = 100 * (i + 1)
        spans += assembler.add(_event(to_server, data, t, role=role, count=count, seq=sent[to_server], port=PORTS[name],
                                      l4="UDP" if name == "DNS-UDP" else "TCP", egress_is_client=client_side))
        spans += assembler.expire(t)
        sent[to_server] += count
    return spans + assembler.close(100 * (len(conversation) + 1)), assembler


@pytest.mark.parametrize("name", NAMES)
@given(pick=st.integers(0, 1 << 16), edits=st.lists(st.tuples(st.integers(0, 60), OPS, st.integers(0, 3), st.integers(0, 2000)), max_size=6),
       role=st.sampled_from(["CLIENT", "SERVER", "UNKNOWN"]), pieces=st.integers(1, 8), client_side=st.booleans())
@FUZZ
def test_the_assembler_never_raises_and_stays_linear_on_mutated_conversations(name, pick, edits, role, pieces, client_side):
    conversation = list(SEEDS[name][pick % len(SEEDS[name])])
    for index, ops, action, extra in edits:  # mutate a recv, split it into pieces, swap its direction, or cut the capture
        if not conversation:
            break
        i = index % len(conversation)
        to_server, data = conversation[i]
        if action == 0:
            conversation[i] = (to_server, mutate(data, ops, DONORS[name]))
        elif action == 1:
            size = max(1, len(data) // pieces)
            conversation[i:i + 1] = [(to_server, data[j:j + size]) for j in range(0, len(data), size)]
        elif action == 2:
            conversation[i] = (not to_server, data)
        else:
            conversation[i] = (to_server, data[:len(data) // 2] + bytes([extra & 0xFF]) * (extra % 3))
    counts = [len(data) + (edits[i % len(edits)][3] if edits and i % 3 == 0 else 0) for i, (_, data) in enumerate(conversation)]  # some captured in part
    limit = assembler_bound_s(sum(len(data) for _, data in conversation), len(conversation))
    (spans, assembler), took = fastest(_feed, name, conversation, counts, role, client_side, limit_s=limit)
    assert took <= limit, f"{took * 1000:.1f} ms for {len(conversation)} events"
    assert all(span.end_ns >= span.start_ns and span.span_id for span in spans)
    assert assembler.idle


def _trickle(first, rest, port, n, role="CLIENT"):
    assembler = SocketAssembler()
    assembler.add(_event(True, first, 1, role=role, port=port, seq=1))
    for i in range(n):
        assembler.add(_event(True, rest[i % len(rest):i % len(rest) + 1], 2 + i, role=role, port=port, seq=1 + len(first) + i))
    return assembler


def _pg(kind, body):
    return kind + struct.pack(">i", len(body) + 4) + body


def _mysql(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


TRICKLES = {  # a message that never completes, one byte per event: a parser answering "need more" each time
    "HTTP": (b"GET / HTTP/1.1\r\n", b"X-A: b\r\n", 8080),
    "REDIS": (b"*1000000\r\n$1\r\na\r\n", b"$1\r\na\r\n", 6379),
    "REDIS-INLINE": (b"GET ", b"aaaa ", 6379),
    "POSTGRESQL": (_pg(b"P", b"\0\0\0\0"), _pg(b"D", b"S\0"), 5432),
    "KAFKA": (struct.pack(">ihhih", 60000, 3, 1, 7, 256), b"c", 9092),
    "DNS-TCP": (b"\xff\xff" + struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x01a\x01a\x01a", b"\x01a", 53),
}


@pytest.mark.parametrize("name", sorted(TRICKLES))
def test_ten_thousand_one_byte_events_cost_linear_time(name):
    first, rest, port = TRICKLES[name]
    _, took = fastest(_trickle, first, rest, port, 10_000, limit_s=1.0)
    assert took <= 1.0, f"{name}: {took:.2f} s for 10,000 one-byte events (re-parsing the buffer from its start is quadratic)"


def test_a_mysql_result_set_in_one_byte_events_costs_linear_time():
    def run():
        assembler = SocketAssembler()
        assembler.add(SocketData("n", 1, 2, 1, 1, "c", 1, False, 49, "TCP", "10.0.0.1", 40000, "10.0.0.2", 3306, "CLIENT",
                                 _mysql(0, b"\x0a5.5\0" + bytes(40)), None, None))
        assembler.add(_event(True, _mysql(0, b"\x03SELECT 1"), 3, role="CLIENT", port=3306))
        assembler.add(_event(False, _mysql(1, b"\x01") + _mysql(2, b"coldef"), 4, role="CLIENT", port=3306))
        row = _mysql(3, b"\x01a")
        for i in range(10_000):
            assembler.add(_event(False, row[i % len(row):i % len(row) + 1], 5 + i, role="CLIENT", port=3306))
        return assembler

    _, took = fastest(run, limit_s=1.0)
    assert took <= 1.0


def _one_byte_writes(message):
    """(offset, bytes): the first four bytes in one write, so the protocol is detected, then a byte per write."""
    yield 0, message[:4]
    for i in range(4, len(message)):
        yield i, message[i:i + 1]


@pytest.fixture
def no_spare_credit(monkeypatch):
    """A byte pays for one byte of parsing: after its first parse, a buffer that grows a byte at a time waits."""
    monkeypatch.setattr(assembly, "PARSE_CREDIT_PER_BYTE", 1)


def test_a_request_held_back_for_credit_is_read_when_the_other_side_speaks_with_its_first_events_time_and_seq(no_spare_credit):
    request = b"GET /slow HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"p" * 200 + b"\r\n\r\n"
    assembler = SocketAssembler()
    for i, piece in _one_byte_writes(request):  # most re-parses wait for credit
        assert assembler.add(_event(True, piece, 1000 + i * 10, role="CLIENT", seq=500 + i)) == []
    assert assembler.next_deadline_ns == 1000 + (len(request) - 1) * 10  # the last bytes wait for a parse, and the engine is told
    [span] = assembler.add(_event(False, b"HTTP/1.1 204 No Content\r\n\r\n", 9000, role="CLIENT"))
    assert (span.request_resource, span.start_ns, span.req_tcp_seq, span.request_bytes, span.response_code) == (
        "/slow", 1000, 500, len(request), 204)


def test_a_request_held_back_for_credit_still_times_out_and_is_cut_off_at_close(no_spare_credit):
    request = b"GET /never HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"p" * 200 + b"\r\n\r\n"
    assembler = SocketAssembler(AssemblyConfig(request_timeout_ns=1_000_000))
    for i, piece in _one_byte_writes(request):
        assembler.add(_event(True, piece, 1000 + i, role="CLIENT"))
    assert assembler.next_deadline_ns is not None  # a parse is owed: the engine calls expire
    assert assembler.expire(1000 + len(request)) == []
    [timeout] = assembler.expire(2_000_000)
    assert (timeout.request_resource, timeout.error_class, timeout.start_ns) == ("/never", "TIMEOUT", 1000)
    other = SocketAssembler()
    for i, piece in _one_byte_writes(request):
        other.add(_event(True, piece, 1000 + i, role="CLIENT"))
    [cut] = other.close(5000)
    assert (cut.request_resource, cut.connection_closed, cut.start_ns) == ("/never", True, 1000)
    assert other.idle


def test_bytes_held_back_after_the_parse_owed_are_read_a_request_timeout_later(no_spare_credit):
    assembler = SocketAssembler(AssemblyConfig(request_timeout_ns=1_000_000))
    assembler.add(_event(True, b"POST /up HTTP/1.1\r\n", 100, role="CLIENT"))
    for i, byte in enumerate(b"Expect: 100-continue\r\n"):
        assembler.add(_event(True, bytes([byte]), 101 + i, role="CLIENT"))
    assembler.add(_event(False, b"HTTP/1.1 100 Continue\r\n\r\n", 200, role="CLIENT"))  # mid-request: the owed parse finds it cut
    for i, byte in enumerate(b"X-A: b\r\n\r\n"):  # the last byte at 309
        assembler.add(_event(True, bytes([byte]), 300 + i, role="CLIENT"))
    assert not assembler.idle and assembler.next_deadline_ns == 309 + 1_000_000
    assert assembler.expire(309 + 999_999) == []
    [timeout] = assembler.expire(309 + 1_000_000)
    assert (timeout.request_resource, timeout.start_ns, timeout.error_class) == ("/up", 100, "TIMEOUT") and assembler.idle


def test_pipelined_requests_in_one_event_after_a_held_back_one_start_at_their_own_events(no_spare_credit):
    first = b"GET /a HTTP/1.1\r\nX-Pad: " + b"p" * 300 + b"\r\n\r\n"
    second = b"GET /b HTTP/1.1\r\n\r\n"
    assembler = SocketAssembler()
    for i, piece in _one_byte_writes(first[:-1]):
        assembler.add(_event(True, piece, 100 + i, role="CLIENT", seq=1 + i))
    assembler.add(_event(True, first[-1:] + second[:5], 5000, role="CLIENT", seq=len(first)))
    assembler.add(_event(True, second[5:], 6000, role="CLIENT", seq=len(first) + 6))
    assert assembler.next_deadline_ns == 6000  # both wait for a parse
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    spans = assembler.add(_event(False, response + response, 7000, role="CLIENT"))
    assert [(s.request_resource, s.start_ns, s.req_tcp_seq) for s in spans] == [("/a", 100, 1), ("/b", 5000, 1 + len(first))]


def test_a_response_longer_than_the_buffer_limit_pairs_with_its_own_request():
    query, small_query = _pg(b"Q", b"SELECT big FROM t\0"), _pg(b"Q", b"SELECT 1\0")
    rows = (_pg(b"T", b"\0\x01big\0" + bytes(18)) + _pg(b"D", b"\0\x01\0\0\0\x10" + b"x" * 16) * 4000
            + _pg(b"C", b"SELECT 4000\0") + _pg(b"Z", b"I"))
    small = _pg(b"T", b"\0\x01a\0" + bytes(18)) + _pg(b"D", b"\0\x01\0\0\0\x011") + _pg(b"C", b"SELECT 1\0") + _pg(b"Z", b"I")
    assembler, spans, t = SocketAssembler(), [], 0
    spans += assembler.add(_event(True, query, t, role="CLIENT", port=5432))
    for i in range(0, len(rows), 1448):  # 108 KB of rows, in 75 reads
        t += 1
        spans += assembler.add(_event(False, rows[i:i + 1448], t, role="CLIENT", port=5432))
    spans += assembler.add(_event(True, small_query, t + 1, role="CLIENT", port=5432))
    spans += assembler.add(_event(False, small, t + 2, role="CLIENT", port=5432))
    assert [(s.request_resource, s.response_message, s.end_ns) for s in spans] == [
        ("SELECT big FROM t", None, t + 10), ("SELECT ?", "SELECT 1", t + 2 + 10)]  # a read's time is its return


def _no_slower_than_in_order(run, n):
    """(spans, assembler) of answers in reverse order, after checking they cost at most 3x answers in order
    (timed in the same run: a quadratic search costs n/2 times as much)."""
    in_order = min(timed(run, n, False)[1] for _ in range(2))
    (spans, assembler), reverse = fastest(run, n, True, limit_s=3 * in_order + 0.05)
    assert reverse <= 3 * in_order + 0.05, f"{n} answers: {reverse:.2f} s in reverse order, {in_order:.2f} s in order"
    return spans, assembler


def test_requests_answered_in_reverse_order_pair_by_key_in_linear_time():
    def run(n, reverse):
        assembler, spans = SocketAssembler(), []
        for i in range(n):
            query = struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0) + b"\x01a\x04test\x00\x00\x01\x00\x01"
            spans += assembler.add(_event(True, query, 1 + i, role="CLIENT", port=53, l4="UDP"))
        for i in reversed(range(n)) if reverse else range(n):
            answer = struct.pack(">HHHHHH", i, 0x8180, 1, 0, 0, 0) + b"\x01a\x04test\x00\x00\x01\x00\x01"
            spans += assembler.add(_event(False, answer, 1 + n + i, role="CLIENT", port=53, l4="UDP"))
        return spans, assembler

    spans, assembler = _no_slower_than_in_order(run, 10_000)
    assert len(spans) == 10_000 and assembler.idle
    assert [s.attributes["dns.id"] for s in spans[:3]] == ["9999", "9998", "9997"]


# the NIC assembler -----------------------------------------------------------------------------------
def _summary(**fields):
    record = {"host": "n", "time": 0, "interface": "eth0", "tap_point": "client-nic", "workload": None, "netns": None, "ip_version": 4,
              "l4_protocol": "UDP", "src_ip": "10.0.0.1", "src_port": 40000, "dst_ip": "10.0.0.2", "dst_port": 53, "ip_id": None, "ttl": None,
              "tcp_flags": None, "tcp_seq": None, "tcp_ack": None, "tcp_window": None, "payload_bytes": 40, "frame_bytes": 82,
              "http_method": None, "http_uri": None, "http_host": None, "http_status": None, "dns_id": None, "dns_is_response": None,
              "dns_query_name": None, "dns_query_type": None, "dns_rcode": None, "dns_answer_count": None, "tls_sni": None,
              "app_command": None, "truncated": False, "malformed": False, "malformed_reason": None}
    record.update(fields)
    return record


def _maybe(strategy):
    return st.none() | strategy


SUMMARIES = st.builds(
    _summary, time=st.integers(0, 10_000), tap_point=st.sampled_from(["client-nic", "server-nic", "x"]),
    l4_protocol=st.sampled_from(["TCP", "UDP", "ICMP", "OTHER"]), src_ip=_maybe(st.sampled_from(["10.0.0.1", "10.0.0.2", "::1"])),
    src_port=_maybe(st.integers(0, 65535)), dst_ip=_maybe(st.sampled_from(["10.0.0.1", "10.0.0.2"])), dst_port=_maybe(st.sampled_from([53, 80])),
    tcp_flags=_maybe(st.integers(0, 255)), tcp_seq=_maybe(st.integers(0, 2**32)), payload_bytes=st.integers(-1, 70_000),
    http_method=_maybe(st.sampled_from(["GET", "POST", ""])), http_uri=_maybe(st.text(max_size=40)), http_host=_maybe(st.text(max_size=10)),
    http_status=_maybe(st.integers(-1, 999)), dns_id=_maybe(st.integers(0, 3)), dns_is_response=_maybe(st.booleans()),
    dns_query_name=_maybe(st.text(max_size=20)), dns_query_type=_maybe(st.sampled_from(["A", "TYPE99"])),
    dns_rcode=_maybe(st.sampled_from(["NOERROR", "SERVFAIL", "NXDOMAIN", "RCODE11", ""])), dns_answer_count=_maybe(st.integers(0, 9)))


@given(records=st.lists(SUMMARIES, max_size=40), watermarks=st.lists(st.integers(0, 3 * 10**10), max_size=5))
@FUZZ
def test_the_nic_assembler_never_raises_on_any_packet_summaries(records, watermarks):
    assembler = FlowPacketAssembler()
    spans = []
    for i, record in enumerate(records):
        spans += assembler.add(record)
        if watermarks and i % 7 == 0:
            spans += assembler.expire(watermarks[i % len(watermarks)])
    spans += assembler.expire(10**12)
    assert assembler.idle and all(s.end_ns >= s.start_ns for s in spans)


def test_the_nic_assembler_pairs_dns_answers_in_reverse_order_in_linear_time():
    def run(n, reverse):
        assembler, spans = FlowPacketAssembler(), []
        for i in range(n):
            spans += assembler.add(_summary(time=i, dns_id=i, dns_is_response=False, dns_query_name="a.test", dns_query_type="A"))
        for i in reversed(range(n)) if reverse else range(n):
            spans += assembler.add(_summary(time=n + i, src_ip="10.0.0.2", src_port=53, dst_ip="10.0.0.1", dst_port=40000, dns_id=i,
                                            dns_is_response=True, dns_rcode="NOERROR", dns_answer_count=1))
        return spans, assembler

    spans, assembler = _no_slower_than_in_order(run, 10_000)
    assert len(spans) == 10_000 and assembler.idle
    assert [s.attributes["dns.id"] for s in spans[:2]] == ["9999", "9998"]


# the reported cases ----------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [b"\xb2", b"1" * 4301, b"\xb9\xb3", b"1" * 19])
def test_a_content_length_that_is_no_ascii_number_is_malformed_in_the_parser_and_the_assembler(length):
    request = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: " + length + b"\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\n"
    assert HTTP1.parse_request(request, False).status is Status.MALFORMED
    assert HTTP1.parse_response(response, True).status is Status.MALFORMED
    assembler = SocketAssembler()
    assert assembler.add(_event(True, b"GET / HTTP/1.1\r\n\r\n", 1, role="CLIENT")) == []
    assert assembler.add(_event(False, response, 2, role="CLIENT")) == [] and assembler.counters.malformed == 1
    other = SocketAssembler()
    assert other.add(_event(True, request, 1, role="CLIENT")) == [] and other.counters.malformed == 1


def test_an_eighteen_digit_content_length_is_still_a_size():
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 000000000000000005\r\n\r\nhello"
    assert HTTP1.parse_response(response, False).message.size == len(response)


@pytest.mark.parametrize("size", [1024, 64 * 1024])
def test_a_run_of_comments_before_no_keyword_gives_no_verb_quickly(size):
    comments = ("/* x */ " * (size // 8))[:size]
    for text, verb in ((comments + "1", None), (comments + "select 1", "SELECT"), ("-- note\n" + comments + "Insert", "INSERT")):
        found, took = fastest(sql_verb, text, limit_s=bound_s(len(text)))
        assert found == verb and took <= bound_s(len(text))
    for statement in (comments.encode() + b"1", comments.encode() + b"select 1"):  # as a PostgreSQL and a MySQL query
        for message, parse in ((_pg(b"Q", statement + b"\0"), POSTGRES.parse_request), (_mysql(0, b"\x03" + statement), MYSQL.parse_request)):
            result, took = fastest(parse, message, False, limit_s=bound_s(len(message)))
            assert result.ok and took <= bound_s(len(message))
            no_verb = None if parse == POSTGRES.parse_request else "QUERY"  # MySQL names the command instead
            assert result.message.request_type == ("SELECT" if statement.endswith(b"select 1") else no_verb)


def test_sql_verbs_by_hand():
    assert sql_verb("  /* hint */ select 1") == "SELECT"
    assert sql_verb("/*a*//*b*/UPDATE t") == "UPDATE"
    assert sql_verb("/* never closed SELECT") is None
    assert sql_verb("-- only a comment") is None
    assert sql_verb("x" * 100) == "X" * 32  # a word longer than any keyword is cut


def test_a_parser_answering_a_message_of_no_bytes_cannot_loop_the_assembler():
    class Zero:  # a broken parser: every buffer is a message of 0 bytes
        name = "HTTP"

        def parse_request(self, data, final):
            return Parse(Status.MESSAGE, Message(is_request=True, size=0))

        parse_response = parse_request

    assembler = SocketAssembler()
    assembler.add(_event(True, b"GET / HTTP/1.1\r\n", 1, role="CLIENT"))  # detected as HTTP, waiting for the rest
    assembler.protocol = Zero()
    assert assembler.add(_event(True, b"x", 2, role="CLIENT")) == [] and assembler.counters.malformed == 1


def test_a_repeated_pair_key_pairs_in_arrival_order_and_a_timed_out_request_leaves_the_index():
    def dns(qid, name, response=False):
        return struct.pack(">HHHHHH", qid, 0x8180 if response else 0x0100, 1, 0, 0, 0) + bytes([len(name)]) + name + b"\x04test\x00\x00\x01\x00\x01"

    assembler = SocketAssembler(AssemblyConfig(request_timeout_ns=1000))
    for t, (qid, name) in enumerate([(5, b"a"), (5, b"b"), (6, b"c"), (7, b"d")]):
        assembler.add(_event(True, dns(qid, name), 100 + t, role="CLIENT", port=53, l4="UDP"))
    spans = assembler.add(_event(False, dns(5, b"a", True), 200, role="CLIENT", port=53, l4="UDP"))
    spans += assembler.add(_event(False, dns(5, b"b", True), 201, role="CLIENT", port=53, l4="UDP"))
    assert [s.request_domain for s in spans] == ["a.test", "b.test"]
    assert [s.request_domain for s in assembler.expire(1102)] == ["c.test"]  # 6 timed out; 7 not yet
    assert assembler.add(_event(False, dns(6, b"c", True), 1103, role="CLIENT", port=53, l4="UDP")) == []
    [late] = assembler.add(_event(False, dns(7, b"d", True), 1103, role="CLIENT", port=53, l4="UDP"))
    assert late.request_domain == "d.test" and assembler.counters.unmatched_responses == 1 and assembler.idle
