"""The eBPF agent in in-collector mode on real traffic: spans assembled on the node by the core, the
client's and the server's views of each request sharing the request's TCP sequence number, and the
call a server made while serving linked to it, end to end (agent -> Kafka -> core's linker)."""

import http.client
import signal

import pytest

from schemas.catalog import NODE_SPANS, SOCKET_DATA
from schemas.serde import AvroDeserializer
from tests.e2e.test_ebpf_agent import Downstream, _serve, _start_agent, front_handler
from tests.kafka_helpers import read_until_idle
from tracetap.model import Span, TapSide
from tracetap.tracing import link_spans


@pytest.fixture(scope="module")
def spans(own_topics, registry):
    settings = own_topics
    downstream = _serve(Downstream)
    front = _serve(front_handler(downstream.server_address[1]))
    agent = _start_agent(settings)  # in-collector: the default
    try:
        conn = http.client.HTTPConnection("127.0.0.1", front.server_address[1], timeout=5)
        for path in ("/one", "/chain", "/two"):
            conn.request("GET", path)
            assert conn.getresponse().read() == b"pong"
        conn.close()
        agent.send_signal(signal.SIGINT)
        out, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, err[-2000:]
    finally:
        if agent.poll() is None:
            agent.kill()
        front.shutdown()
        downstream.shutdown()
    decode = AvroDeserializer(registry)
    records = [decode(m.value()) for m in read_until_idle(settings, NODE_SPANS.full_name(settings.topics.prefix))]
    ports = {front.server_address[1], downstream.server_address[1]}
    raw = read_until_idle(settings, SOCKET_DATA.full_name(settings.topics.prefix), idle_s=1)
    return {"spans": [r for r in records if r["server_port"] in ports], "front": front.server_address[1],
            "down": downstream.server_address[1], "raw": raw, "summary": out}


def test_spans_come_out_instead_of_raw_socket_data(spans):
    assert spans["raw"] == [] and "decode_errors" not in spans["summary"]
    front = [(s["tap_side"], s["request_resource"], s["response_code"]) for s in spans["spans"] if s["server_port"] == spans["front"]]
    for path in ("/one", "/chain", "/two"):
        assert ("CLIENT_PROCESS", path, 200) in front and ("SERVER_PROCESS", path, 200) in front
    assert all(s["protocol"] == "HTTP" and s["duration_ns"] > 0 for s in spans["spans"])


def test_the_client_and_server_views_of_a_request_share_its_sequence_number(spans):
    by_path = {}
    for s in spans["spans"]:
        by_path.setdefault((s["server_port"], s["request_resource"]), {})[s["tap_side"]] = s
    for views in by_path.values():
        client, server = views["CLIENT_PROCESS"], views["SERVER_PROCESS"]
        assert client["req_tcp_seq"] is not None and client["req_tcp_seq"] == server["req_tcp_seq"]
        assert client["resp_tcp_seq"] == server["resp_tcp_seq"]
        assert client["flow_id"] == server["flow_id"]
        assert client["start_time"] <= server["start_time"] and server["end_time"] <= client["end_time"]


def _span(r):
    fields = {k: r[k] for k in ("protocol", "host", "flow_id", "l4_protocol", "client_ip", "client_port", "server_ip", "server_port",
                                "request_type", "request_resource", "req_tcp_seq", "resp_tcp_seq", "pid", "tid", "comm")}
    span = Span(tap_side=TapSide(r["tap_side"]), start_ns=r["start_time"], end_ns=r["end_time"],
                syscall_trace_id_request=r["syscall_trace_id_request"], **fields)
    span.identity = r["span_id"]
    return span


def test_the_call_made_while_serving_links_into_one_trace(spans):
    linked = {(s.tap_side, s.server_port, s.request_resource): s for s in link_spans([_span(r) for r in spans["spans"]])}
    entry = linked[(TapSide.CLIENT_PROCESS, spans["front"], "/chain")]
    served = linked[(TapSide.SERVER_PROCESS, spans["front"], "/chain")]
    call = linked[(TapSide.CLIENT_PROCESS, spans["down"], "/pong")]
    answered = next(s for (side, port, _), s in linked.items() if side is TapSide.SERVER_PROCESS and port == spans["down"])
    assert served.parent_span_id == entry.span_id  # the path: one request seen from both ends
    assert call.parent_span_id == served.span_id  # the thread trace id: the call made while serving
    assert answered.parent_span_id == call.span_id
    assert len({entry.trace_id, served.trace_id, call.trace_id, answered.trace_id}) == 1
    other = linked[(TapSide.CLIENT_PROCESS, spans["front"], "/one")]
    assert other.trace_id != entry.trace_id
