"""Span assembly on one socket's events (golden tests: inputs and expected spans written by hand)."""

import struct

from tracetap.assembly import AssemblyConfig, SocketAssembler
from tracetap.model import SocketData, TapSide

T0 = 1_700_000_000_000_000_000
REQ = b"GET /orders/42 HTTP/1.1\r\nHost: shop\r\ntraceparent: 00-abc-def-01\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
RESP_500 = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"


def ev(egress, payload, t, *, role="CLIENT", seq=None, count=None, trace=None, tid=11, l4="TCP", lport=40000, rport=8080):
    return SocketData("node", t, t + 1000, 10, tid, "app", 99, egress, len(payload) if count is None else count, l4,
                      "10.0.0.1", lport, "10.0.0.2", rport, role, payload, seq, trace)


def test_a_client_request_and_response_make_one_span_with_both_sequence_numbers():
    a = SocketAssembler()
    assert a.add(ev(True, REQ, T0, seq=1000, trace=None)) == []
    [span] = a.add(ev(False, RESP, T0 + 5_000_000, seq=9000))
    assert (span.protocol, span.tap_side, span.request_type, span.request_resource, span.request_domain) == ("HTTP", TapSide.CLIENT_PROCESS, "GET", "/orders/42", "shop")
    assert (span.start_ns, span.end_ns, span.duration_ns) == (T0, T0 + 5_000_000 + 1000, 5_001_000)  # write entry to read return
    assert (span.response_code, span.error_class, span.request_bytes, span.response_bytes) == (200, None, len(REQ), len(RESP))
    assert (span.req_tcp_seq, span.resp_tcp_seq, span.endpoint) == (1000, 9000, "GET /orders/{id}")
    assert (span.client_ip, span.client_port, span.server_ip, span.server_port) == ("10.0.0.1", 40000, "10.0.0.2", 8080)
    assert span.flow_id == "tcp|10.0.0.1|40000|10.0.0.2|8080" and span.trace_headers == {"traceparent": "00-abc-def-01"}


def test_keepalive_requests_pair_in_order_and_a_server_socket_gives_server_spans():
    a = SocketAssembler()
    spans = []
    for i, response in enumerate((RESP, RESP_500)):
        spans += a.add(ev(False, REQ, T0 + i * 10_000_000, role="SERVER", seq=1000 + i * len(REQ), trace=7 + i))
        spans += a.add(ev(True, response, T0 + i * 10_000_000 + 2_000_000, role="SERVER", trace=7 + i))
    assert [(s.tap_side, s.response_code, s.error_class, s.req_tcp_seq, s.syscall_trace_id_request) for s in spans] == [
        (TapSide.SERVER_PROCESS, 200, None, 1000, 7), (TapSide.SERVER_PROCESS, 500, "SERVER_ERROR", 1000 + len(REQ), 8)]
    assert spans[0].start_ns == T0 + 1000  # a server's read: when it returned with the request
    assert (spans[0].client_ip, spans[0].server_port) == ("10.0.0.2", 40000)  # the peer is the client


def test_pipelined_requests_in_one_write_pair_with_responses_in_one_read():
    a = SocketAssembler()
    a.add(ev(True, REQ + REQ, T0, seq=500))
    spans = a.add(ev(False, RESP + RESP_500, T0 + 1_000_000))
    assert [(s.req_tcp_seq, s.response_code) for s in spans] == [(500, 200), (500 + len(REQ), 500)]


def test_a_response_larger_than_the_captured_prefix_is_skipped_by_byte_count():
    body = b"x" * 5000
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + body
    a = SocketAssembler()
    a.add(ev(True, REQ, T0))
    assert a.add(ev(False, big[:1024], T0 + 1_000_000, count=2000)) == []  # captured 1024 of 2000 bytes read
    [span] = a.add(ev(False, big[2000:3024], T0 + 2_000_000, count=len(big) - 2000))
    assert (span.response_code, span.response_bytes, span.end_ns) == (200, len(big), T0 + 2_000_000 + 1000)
    a.add(ev(True, REQ, T0 + 3_000_000))  # the next request is parsed from its first byte again
    [second] = a.add(ev(False, RESP, T0 + 4_000_000))
    assert second.start_ns == T0 + 3_000_000 and second.response_code == 200


def test_a_request_split_across_writes_starts_at_the_first():
    a = SocketAssembler()
    a.add(ev(True, REQ[:10], T0, seq=100))
    a.add(ev(True, REQ[10:], T0 + 500, seq=110))
    [span] = a.add(ev(False, RESP, T0 + 900))
    assert (span.start_ns, span.req_tcp_seq, span.request_resource) == (T0, 100, "/orders/42")


def test_unanswered_requests_time_out_and_a_close_flags_the_cut_one():
    a = SocketAssembler(AssemblyConfig(request_timeout_ns=1_000_000_000))
    a.add(ev(True, REQ, T0))
    assert a.expire(T0 + 999_999_999) == []
    [timeout] = a.expire(T0 + 2_000_000_000)
    assert (timeout.error_class, timeout.end_ns, timeout.response_code) == ("TIMEOUT", T0 + 1_000_000_000, None)
    a.add(ev(True, REQ, T0 + 3_000_000_000))
    [cut] = a.close(T0 + 3_500_000_000)
    assert (cut.connection_closed, cut.error_class, cut.end_ns) == (True, "SERVER_ERROR", T0 + 3_500_000_000)


def test_a_response_the_close_cuts_off_is_parsed_for_what_it_holds():
    a = SocketAssembler()
    a.add(ev(True, REQ, T0))
    cut = b"HTTP/1.1 503 Service Unavailable\r\nContent-Ty"  # the rest of the headers never came
    assert a.add(ev(False, cut, T0 + 1000)) == []
    [span] = a.close(T0 + 5000)
    assert (span.response_code, span.error_class, span.connection_closed, span.response_bytes) == (503, "SERVER_ERROR", True, len(cut))
    pg = SocketAssembler()
    error = b"E" + struct.pack(">i", 4 + 37) + b"SERROR\0C53300\0Mtoo many connections\0\0"  # no ReadyForQuery after it
    pg.add(ev(True, b"Q" + struct.pack(">i", 13) + b"SELECT 1\0", T0, rport=5432))
    assert pg.add(ev(False, error, T0 + 1000, rport=5432)) == []
    [span] = pg.close(T0 + 5000)
    assert (span.request_resource, span.response_message, span.error_class, span.connection_closed) == (
        "SELECT ?", "53300: too many connections", "SERVER_ERROR", True)
    assert span.attributes["sql.sqlstate"] == "53300"


def test_a_whole_response_before_a_close_is_not_flagged():
    a = SocketAssembler()
    a.add(ev(True, REQ, T0))
    a.add(ev(False, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until the close", T0 + 1000))
    [span] = a.close(T0 + 5000)
    assert (span.response_code, span.error_class, span.connection_closed) == (200, None, False)


def test_a_length_prefix_read_alone_is_held_until_the_rest_tells_the_protocol():
    """A Kafka broker reads a request's 4-byte size, then the rest: neither piece alone is a request header."""
    body = struct.pack(">hhih", 18, 3, 7, 4) + b"test" + b"\x00\x00\x00"
    request = struct.pack(">i", len(body)) + body
    response = struct.pack(">ii", 10, 7) + struct.pack(">hi", 0, 0)[:6]
    a = SocketAssembler()
    assert a.add(ev(False, request[:4], T0, role="SERVER", lport=9095, rport=50000)) == []
    assert a.protocol is None and not a.idle  # held, not given up
    restored = SocketAssembler.from_state(a.to_state(), AssemblyConfig())  # a checkpoint between the two reads keeps it
    for assembler in (a, restored):
        assert assembler.add(ev(False, request[4:], T0 + 10, role="SERVER", lport=9095, rport=50000)) == []
        [span] = assembler.add(ev(True, response, T0 + 20, role="SERVER", lport=9095, rport=50000))
        assert (span.protocol, span.request_type, span.start_ns, span.request_bytes) == ("KAFKA", "ApiVersions", T0 + 1000, len(request))


def test_redis_pipeline_and_dns_by_id():
    a = SocketAssembler()
    a.add(ev(True, b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n", T0, rport=6379))
    spans = a.add(ev(False, b"$1\r\n1\r\n-ERR boom\r\n", T0 + 100, rport=6379))
    assert [(s.request_type, s.request_resource, s.error_class, s.response_message) for s in spans] == [
        ("GET", "a", None, None), ("GET", "b", "SERVER_ERROR", "ERR boom")]
    d = SocketAssembler()
    q1 = struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x01a\x04test\x00\x00\x01\x00\x01"
    q2 = struct.pack(">HHHHHH", 2, 0x0100, 1, 0, 0, 0) + b"\x01b\x04test\x00\x00\x1c\x00\x01"
    r2 = struct.pack(">HHHHHH", 2, 0x8183, 1, 0, 0, 0) + b"\x01b\x04test\x00\x00\x1c\x00\x01"
    d.add(ev(True, q1, T0, l4="UDP", rport=53))
    d.add(ev(True, q2, T0 + 10, l4="UDP", rport=53))
    [span] = d.add(ev(False, r2, T0 + 50, l4="UDP", rport=53))  # answers out of order pair by id
    assert (span.protocol, span.request_domain, span.request_type, span.response_message, span.error_class) == ("DNS", "b.test", "AAAA", "NXDOMAIN", "CLIENT_ERROR")


def test_span_ids_are_deterministic_and_distinct():
    def run():
        a = SocketAssembler()
        a.add(ev(True, REQ, T0, seq=1))
        out = a.add(ev(False, RESP, T0 + 10))
        a.add(ev(True, REQ, T0 + 20, seq=1 + len(REQ)))
        return out + a.add(ev(False, RESP, T0 + 30))

    first, second = run(), run()
    assert [s.span_id for s in first] == [s.span_id for s in second]
    assert len({s.span_id for s in first}) == 2


def test_garbage_is_not_assembled_and_a_malformed_message_is_counted():
    a = SocketAssembler()
    assert a.add(ev(True, b"\x90\xff\x10\x42\x07\x08\x09\x0a" * 4, T0)) == [] and a.protocol is None
    b = SocketAssembler()
    b.add(ev(True, REQ, T0))
    assert b.add(ev(False, b"NOT HTTP AT ALL\r\n\r\n", T0 + 1)) == [] and b.counters.malformed == 1


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PIECES = [REQ, RESP, RESP_500, b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n", b"\x00\xff garbage", b"HTTP/1.1 200 OK\r\n", b"\r\n"]


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(_PIECES), st.integers(0, 80), st.integers(0, 3000),
                          st.sampled_from(["CLIENT", "SERVER", "UNKNOWN"])), max_size=30))
@settings(max_examples=300)
def test_any_event_sequence_assembles_without_raising(events):
    a = SocketAssembler(AssemblyConfig(request_timeout_ns=50))
    t = T0
    for egress, piece, cut, extra, role in events:
        t += 10
        payload = piece[cut:] if cut < len(piece) else piece
        for span in a.add(ev(egress, payload, t, role=role, count=len(payload) + extra)) + a.expire(t):
            assert span.end_ns >= span.start_ns and span.span_id
    for span in a.close(t + 1):  # the response in progress ends; requests still open are flagged as cut off
        assert span.end_ns >= span.start_ns
        if span.response_message == "connection closed before the response":
            assert span.connection_closed and (span.error_class, span.response_code) == ("SERVER_ERROR", None)
    assert a.idle


def _with(event, **fields):
    return event._replace(**fields)


def test_a_changed_loss_generation_drops_the_broken_exchange_and_the_next_one_pairs():
    a = SocketAssembler(AssemblyConfig(request_timeout_ns=1_000_000_000))
    assert a.add(ev(True, REQ, T0)) == []  # its response is lost in the kernel
    # The next request carries the socket's new loss generation: the first request is dropped, not left to time out.
    assert a.add(_with(ev(True, REQ, T0 + 10_000_000), loss_generation=1)) == []
    [span] = a.add(_with(ev(False, RESP, T0 + 12_000_000), loss_generation=1))
    assert (span.start_ns, span.response_code) == (T0 + 10_000_000, 200)
    assert a.expire(T0 + 60_000_000_000) == [] and a.counters.cut_by_loss == 1 and a.idle


def test_a_loss_marker_on_a_quiet_socket_drops_the_open_request_before_it_times_out():
    a = SocketAssembler(AssemblyConfig(request_timeout_ns=1_000_000_000))
    a.add(ev(True, REQ, T0))
    a.add(ev(False, RESP[:20], T0 + 1_000_000))  # part of the response; the rest is lost
    assert a.add(_with(ev(False, b"", T0 + 1_000_100, count=0), loss_generation=1)) == []  # the kernel's marker: no bytes
    assert a.expire(T0 + 60_000_000_000) == [] and a.close(T0 + 61_000_000_000) == []
    assert a.counters.cut_by_loss == 1


def test_spans_carry_the_sample_ratio_their_exchange_was_captured_under():
    a = SocketAssembler()
    a.add(_with(ev(True, REQ, T0), sample_ratio=0.25))
    [span] = a.add(_with(ev(False, RESP, T0 + 1_000_000), sample_ratio=0.25))
    assert span.sample_ratio == 0.25 and span.to_record()["sample_ratio"] == 0.25
    restored = SocketAssembler.from_state(a.to_state(), AssemblyConfig())
    restored.add(ev(True, REQ, T0 + 2_000_000)._replace(sample_ratio=0.25))
    [again] = restored.add(ev(False, RESP, T0 + 3_000_000)._replace(sample_ratio=0.25))
    assert again.sample_ratio == 0.25


def test_capture_ending_drops_unanswered_requests_and_keeps_the_response_in_progress():
    a = SocketAssembler()
    a.add(ev(True, b"GET /a HTTP/1.0\r\n\r\n", T0))
    a.add(ev(False, b"HTTP/1.0 200 OK\r\n\r\npart of a body read until close", T0 + 1_000))  # size unknown: in progress
    [span] = a.abandon()
    assert span.response_code == 200 and a.counters.abandoned == 0 and a.idle
    b = SocketAssembler()
    b.add(ev(True, REQ, T0))
    assert b.abandon() == [] and b.counters.abandoned == 1 and b.idle
