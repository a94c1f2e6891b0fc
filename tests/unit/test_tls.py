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
