"""TLS in the core: the record-layer protocol (a NIC's view, and a socket whose TLS is not probed), and a socket's
assembly restarting at its first plaintext from the OpenSSL probes. The ClientHello comes from OpenSSL itself
(Python's ssl over memory BIOs); the conversations from tests/parser_seeds.py (curl and Python against nginx)."""

import ssl

from tests.parser_seeds import SEEDS
from tests.unit.test_assembly import REQ, RESP, T0, ev
from tracetap.assembly import AssemblyConfig, SocketAssembler
from tracetap.protocols import detect
from tracetap.protocols.base import Status
from tracetap.protocols.tls import TLS, server_name


def _client_hello(host):
    """The first flight OpenSSL writes for a client that names `host` (SNI)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=host)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_a_client_hello_is_detected_on_any_port_and_names_its_server():
    hello = _client_hello("orders.bank.test")
    assert detect("TCP", hello, 40000) is TLS
    parsed = TLS.parse_request(hello, False)
    assert parsed.status is Status.MESSAGE
    message = parsed.message
    assert (message.size, message.request_type, message.request_domain, message.expects_response) == \
        (len(hello), "client_hello", "orders.bank.test", False)
    assert server_name(hello[:60]) is None  # cut before its extensions: no name, no error


def test_a_client_hello_cut_short_waits_for_its_record():
    hello = _client_hello("a.test")
    assert TLS.parse_request(hello[:100], False).status is Status.NEED_MORE
    assert TLS.parse_request(hello[:100], True).message.size == len(hello)  # what the prefix shows, at a close


def test_plaintext_and_other_protocols_are_not_tls():
    for data in (REQ, RESP, b"\x17\x03\x03\x00\x00", b"\x17\x03\x03\x48\x01" + bytes(10), b"\x18\x03\x03\x00\x10" + bytes(16)):
        assert not TLS.detect(data, 443), data[:8]


def _spans(connection):
    a, spans, t, seq = SocketAssembler(), [], T0, {True: 1000, False: 900_000}
    for to_server, data in connection:
        t += 1_000_000
        spans += a.add(ev(to_server, data, t, role="CLIENT", seq=seq[to_server]))
        seq[to_server] += len(data)
    return spans + a.close(t + 1_000_000)


def test_each_recorded_exchange_is_one_tls_span_starting_at_its_first_application_data_byte():
    for connection in SEEDS["TLS"]:
        spans = _spans(connection)
        # the client's application-data runs that the server answered (not the handshake, not a closing alert)
        expected, offset, answered = [], 1000, None
        for to_server, data in connection:
            if to_server and data[0] == 0x17 and len(data) != 24 and answered is None:
                answered = offset
            if not to_server and answered is not None:
                expected.append(answered)
                answered = None
            if to_server:
                offset += len(data)
        assert [s.req_tcp_seq for s in spans] == expected and expected
        assert all(s.protocol == "TLS" and s.tls and s.request_type == "application_data" and s.error_class is None for s in spans)


def test_the_first_plaintext_restarts_a_socket_read_as_ciphertext_until_then():
    a = SocketAssembler(AssemblyConfig())
    hello = _client_hello("shop.test")
    assert a.add(ev(True, hello, T0, seq=1)) == [] and a.protocol is TLS  # what a forensics capture of the handshake shows
    tls = ev(True, REQ, T0 + 10, seq=600)._replace(tls=True)
    assert a.add(tls) == [] and a.protocol is not TLS
    assert a.add(ev(False, b"\x17\x03\x03\x00\x20" + bytes(32), T0 + 15)) == []  # ciphertext after it: ignored
    [span] = a.add(ev(False, RESP, T0 + 20, seq=9000)._replace(tls=True))
    assert (span.protocol, span.request_resource, span.response_code, span.tls, span.req_tcp_seq) == ("HTTP", "/orders/42", 200, True, 600)
    again = SocketAssembler.from_state(a.to_state(), AssemblyConfig())  # the stream jobs' checkpoints keep it
    [span] = again.add(ev(True, REQ, T0 + 30, seq=700)._replace(tls=True)) + again.add(ev(False, RESP, T0 + 40)._replace(tls=True))
    assert span.tls and span.protocol == "HTTP"


# Python's ssl client to a Python ssl server (TLS 1.3, as recorded in tests/parser_seeds.py): the client's request
# follows its Finished at once, and the server's two session tickets and its answer came back in one read.
_HELLO, _SERVER_FLIGHT, _FINISHED, _REQUEST, _TICKETS_AND_ANSWER, _CLOSE_NOTIFY = (data for _, data in SEEDS["TLS"][1])
_TICKET, _ANSWER = _TICKETS_AND_ANSWER[:287], _TICKETS_AND_ANSWER[574:]
_MS = 1_000_000


def _nic(exchange, watermarks_every_ns=100 * _MS, until_ns=None, assembler=None):
    """A NIC's spans of `exchange` [(client's?, bytes, at ns)], the watermark moving on with the node's other traffic
    between packets (so a quiet response lingers out whenever it can); the assembler, for more."""
    a, spans, seq, watermark = assembler or SocketAssembler(), [], {True: 1000, False: 900_000}, T0
    for to_server, data, at in exchange:
        while watermark + watermarks_every_ns < at:
            watermark += watermarks_every_ns
            spans += a.expire(watermark)
        spans += a.add(ev(to_server, data, at if to_server else at - 1000, role="CLIENT", seq=seq[to_server]))  # (ev's reads return 1 µs on)
        seq[to_server] += len(data)
    for watermark in range(watermark, until_ns or watermark, watermarks_every_ns):
        spans += a.expire(watermark)
    return a, spans


def _handshake(t):
    return [(True, _HELLO, t), (False, _SERVER_FLIGHT, t + _MS), (True, _FINISHED, t + 2 * _MS)]


_ASKED = T0 + 3 * _MS  # when the request crosses, right after the client's Finished
_REQUEST_SEQ, _ANSWER_SEQ = 1000 + len(_HELLO) + len(_FINISHED), 900_000 + len(_SERVER_FLIGHT) + 2 * len(_TICKET)


def test_tls13_tickets_that_cross_the_first_request_are_not_taken_for_its_slow_answer():
    slow = _handshake(T0) + [(True, _REQUEST, _ASKED), (False, _TICKET, _ASKED + _MS // 100), (False, _TICKET, _ASKED + _MS // 50),
                             (False, _ANSWER, _ASKED + 3000 * _MS), (True, _CLOSE_NOTIFY, _ASKED + 3001 * _MS)]
    _, spans = _nic(slow)
    assert [(s.start_ns, s.end_ns, s.req_tcp_seq, s.resp_tcp_seq, s.response_bytes) for s in spans] == \
        [(_ASKED, _ASKED + 3000 * _MS, _REQUEST_SEQ, _ANSWER_SEQ, len(_ANSWER))]


def test_tls13_tickets_either_side_of_the_first_request_are_not_its_answer():
    # OpenSSL writes each ticket on its own: curl's request fell between nginx's two (tests/parser_seeds.py)
    split = _handshake(T0) + [(False, _TICKET, _ASKED - _MS // 2), (True, _REQUEST, _ASKED), (False, _TICKET, _ASKED + _MS // 100),
                              (False, _ANSWER, _ASKED + 2500 * _MS), (True, _CLOSE_NOTIFY, _ASKED + 2501 * _MS)]
    _, spans = _nic(split)
    assert [(s.start_ns, s.end_ns, s.resp_tcp_seq) for s in spans] == [(_ASKED, _ASKED + 2500 * _MS, _ANSWER_SEQ)]


def test_tls13_tickets_and_a_quick_answer_are_one_response_held_until_the_client_speaks_again():
    quick = _handshake(T0) + [(True, _REQUEST, _ASKED), (False, _TICKETS_AND_ANSWER, _ASKED + _MS)]
    a, spans = _nic(quick, until_ns=_ASKED + 20_000 * _MS)
    assert spans == []  # the answer may still be to come: an idle keep-alive connection holds it
    [span] = a.add(ev(True, REQ, _ASKED + 20_000 * _MS, seq=5000))  # its next request: the first exchange was whole
    assert (span.start_ns, span.end_ns, span.response_bytes) == (_ASKED, _ASKED + _MS, len(_TICKETS_AND_ANSWER))
    a, spans = _nic(quick, until_ns=_ASKED + 31_000 * _MS)
    assert [(s.end_ns, s.error_class) for s in spans] == [(_ASKED + _MS, None)]  # held no longer than a request's timeout


def test_a_checkpoint_between_the_tickets_and_the_answer_keeps_what_the_tickets_were():
    a, spans = _nic(_handshake(T0) + [(True, _REQUEST, _ASKED), (False, _TICKET + _TICKET, _ASKED + _MS // 100)])
    again = SocketAssembler.from_state(a.to_state(), AssemblyConfig())
    _, spans = _nic([(False, _ANSWER, _ASKED + 3000 * _MS), (True, _CLOSE_NOTIFY, _ASKED + 3001 * _MS)], assembler=again)
    assert [(s.start_ns, s.end_ns) for s in spans] == [(_ASKED, _ASKED + 3000 * _MS)]


def test_after_a_tls12_handshake_the_first_answer_is_not_held():
    hello, flight, key_exchange, finished, request, answer, _ = (data for _, data in SEEDS["TLS"][2])
    exchange = [(True, hello, T0), (False, flight, T0 + _MS), (True, key_exchange, T0 + 2 * _MS), (False, finished, T0 + 3 * _MS),
                (True, request, T0 + 4 * _MS), (False, answer, T0 + 5 * _MS)]
    _, spans = _nic(exchange, until_ns=T0 + 1200 * _MS)
    assert [(s.start_ns, s.end_ns) for s in spans] == [(T0 + 4 * _MS, T0 + 5 * _MS)]  # ended by the linger, as any answer
