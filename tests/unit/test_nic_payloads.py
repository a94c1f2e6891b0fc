"""NIC spans from packet payloads (the packet agent in-collector): recorded real conversations of every protocol
(tests/parser_seeds.py) cut into packets as a tap point would see them, through FlowStage as the node runs it.
Expected spans are those the same conversation gives at a socket, moved to the tap point."""

import pytest

from tests.fuzzing import PROTOCOLS
from tests.parser_seeds import SEEDS
from tracetap.assembly import SocketAssembler
from tracetap.model import SocketData, TapSide
from tracetap.stages import FlowStage

T0 = 1_700_000_000_000_000_000
CLIENT, SERVER = ("10.0.0.1", 41000), ("10.0.0.2", 40000)  # a port that names no protocol: detection by structure
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


def _packet(time_ns, src, dst, payload, seq, flags, l4="TCP", tap="server-nic"):
    return {"host": "node", "time": time_ns, "interface": "veth-s", "tap_point": tap, "workload": "backend", "netns": None,
            "ip_version": 4, "l4_protocol": l4, "src_ip": src[0], "src_port": src[1], "dst_ip": dst[0], "dst_port": dst[1],
            "ip_id": None, "ttl": 64, "tcp_flags": flags if l4 == "TCP" else None, "tcp_seq": seq if l4 == "TCP" else None,
            "tcp_ack": None, "tcp_window": None, "payload_bytes": len(payload), "frame_bytes": 54 + len(payload), "http_method": None,
            "http_uri": None, "http_host": None, "http_status": None, "dns_id": None, "dns_is_response": None, "dns_query_name": None,
            "dns_query_type": None, "dns_rcode": None, "dns_answer_count": None, "tls_sni": None, "app_command": None, "truncated": False,
            "malformed": False, "malformed_reason": None, "payload": payload}


def _packets(connection, l4="TCP", tap="server-nic", retransmit=False):
    """A recorded connection as packets at a tap: a SYN, each recv as one segment (each one twice when `retransmit`), a FIN."""
    seq = {True: 1000, False: 900_000}
    t = T0
    out = [_packet(t, CLIENT, SERVER, b"", seq[True] - 1, SYN, l4, tap)] if l4 == "TCP" else []
    for to_server, data in connection:
        src, dst = (CLIENT, SERVER) if to_server else (SERVER, CLIENT)
        t += 1_000_000
        out.append(_packet(t, src, dst, data, seq[to_server], PSH | ACK, l4, tap))
        if retransmit:  # the same bytes again, before the next ones
            out.append(_packet(t + 500, src, dst, data, seq[to_server], PSH | ACK, l4, tap))
        seq[to_server] = (seq[to_server] + len(data)) % 2**32
    if l4 == "TCP":
        out.append(_packet(t + 1_000_000, CLIENT, SERVER, b"", seq[True], FIN | ACK, l4, tap))
    return out


def _at_the_socket(connection, l4="TCP"):
    """The same conversation through a client socket's assembly (the expectation's source)."""
    assembler, spans, t, sent = SocketAssembler(), [], T0, {True: 1000, False: 900_000}
    for to_server, data in connection:
        t += 1_000_000
        spans += assembler.add(SocketData("node", t, t, 1, 1, "app", 3, to_server, len(data), l4, *CLIENT, *SERVER, "UNKNOWN", data,
                                          sent[to_server] if l4 == "TCP" else None, None))
        sent[to_server] += len(data)
    return spans + assembler.close(t + 1_000_000)


def _through_the_stage(packets, checkpoint=False):
    stage, spans = FlowStage(), []
    for packet in packets:
        spans += stage.packet(packet)
        if checkpoint:  # the stream jobs' state between any two records
            stage = FlowStage.from_state(stage.to_state(), stage.config)
    return spans + stage.advance(T0 + 10**12)


def _view(span):
    return (span.protocol, span.request_type, span.request_resource, span.response_code, span.error_class, span.req_tcp_seq,
            span.client_ip, span.client_port, span.server_port, span.start_ns)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_every_protocol_the_core_parses_gives_the_same_spans_at_a_nic_as_at_its_socket(name):
    l4 = "UDP" if name == "DNS-UDP" else "TCP"
    for connection in SEEDS[name]:
        expected = [_view(s) for s in _at_the_socket(connection, l4)]
        spans = _through_the_stage(_packets(connection, l4))
        assert [_view(s) for s in spans] == expected, name
        assert [_view(s) for s in _through_the_stage(_packets(connection, l4), checkpoint=True)] == expected, name
        assert all(s.tap_side is TapSide.SERVER_NIC and s.server_workload == "backend" and s.pid is None for s in spans)
        assert spans or name == "HTTP2" and not expected  # a connection without a whole request gives none either way


def test_retransmitted_segments_are_read_once():
    connection = SEEDS["POSTGRESQL"][0]
    once = [_view(s) for s in _through_the_stage(_packets(connection))]
    assert once and [_view(s) for s in _through_the_stage(_packets(connection, retransmit=True))] == once


def test_the_tap_point_names_the_side_and_the_span_ids_differ_from_the_sockets():
    connection = SEEDS["REDIS"][0]
    client = _through_the_stage(_packets(connection, tap="client-nic"))
    server = _through_the_stage(_packets(connection, tap="server-nic"))
    assert {s.tap_side for s in client} == {TapSide.CLIENT_NIC} and {s.client_workload for s in client} == {"backend"}
    assert [_view(s) for s in client] == [_view(s) for s in server]
    assert not {s.span_id for s in client} & {s.span_id for s in server}
