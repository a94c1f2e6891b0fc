"""The agents' in-collector mode (producers/collector.py): the stream jobs' flow stage on the node, and the
spans it sends (raw.spans) read back by the stream jobs unchanged (`Span.from_record`)."""

import dataclasses
import json

import fastavro
import pytest

from producers.collector import NodeCollector
from schemas.catalog import NODE_SPANS, PACKETS
from tracetap.errors import InvalidEvent
from tracetap.model import Span, span_from_state, span_to_state
from tracetap.stages import FlowStage, StageConfig

S = 1_000_000_000
T0 = 1_700_000_000 * S
REQ = b"GET /orders/42 HTTP/1.1\r\nHost: shop\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
CONFIG = StageConfig(max_out_of_order_ns=0, allowed_lateness_ns=0)


def data(egress, payload, t, socket_id=1):
    return {"host": "n", "start_time": t, "end_time": t + 10, "pid": 7, "tid": 7, "comm": "c", "socket_id": socket_id,
            "direction": "EGRESS" if egress else "INGRESS", "bytes": len(payload), "l4_protocol": "TCP", "local_ip": "10.0.0.1",
            "local_port": 40000 + socket_id, "remote_ip": "10.0.0.2", "remote_port": 80, "role": "CLIENT", "payload": payload,
            "tcp_seq": 1000, "syscall_trace_id": None}


def close(t, socket_id):
    return {"host": "n", "time": t, "kind": "CLOSE", "pid": 7, "socket_id": socket_id}


def packet(t, **fields):
    record = {f["name"]: None for f in PACKETS.schema()["fields"]}
    record.update(host="n", time=t, interface="eth0", tap_point="server-nic", l4_protocol="UDP", payload_bytes=40, frame_bytes=82,
                  truncated=False, malformed=False, src_ip="10.0.0.1", src_port=5353, dst_ip="10.0.0.53", dst_port=53)
    record.update(fields)
    return record


def collect():
    emitted = []
    return NodeCollector(emitted.append, CONFIG), emitted


def test_a_request_and_its_response_become_one_span_with_the_request_time_and_headers():
    collector, emitted = collect()
    collector.add("socket_data", "f1", data(True, REQ, T0))
    collector.add("socket_data", "f1", data(False, RESP, T0 + 3_000_000))
    [span] = emitted
    assert (span.request_type, span.request_resource, span.response_code, span.start_ns) == ("GET", "/orders/42", 200, T0)
    assert span.trace_headers["traceparent"].startswith("00-0af7651916cd43dd")


def test_an_unanswered_request_times_out_on_the_watermark_and_at_exit_open_requests_are_counted_not_reported():
    collector, emitted = collect()
    collector.add("socket_data", "f2", data(True, REQ, T0, socket_id=2))  # never answered
    collector.add("socket_data", "f3", data(True, REQ, T0 + 40 * S, socket_id=3))  # moves the watermark past the 30 s timeout
    collector.tick()
    assert [(s.error_class, s.end_ns - s.start_ns) for s in emitted] == [("TIMEOUT", 30 * S)]
    collector.flush()  # the agent stopping says nothing of how socket 3's request ended
    assert len(emitted) == 1 and collector.abandoned == 1 and len(collector) == 0


def test_a_close_ends_the_open_request_as_cut_off_once_the_watermark_passes_it_as_in_the_stream_jobs():
    collector, emitted = collect()
    collector.add("socket_data", "f4", data(True, REQ, T0, socket_id=4))
    collector.add("lifecycle", "f4", close(T0 + S, 4))
    assert emitted == []  # its data may still be on its way
    collector.add("socket_data", "f5", data(True, REQ, T0 + 2 * S, socket_id=5))
    collector.tick()
    [span] = emitted
    assert span.connection_closed and span.request_resource == "/orders/42"
    assert "f4" not in collector._flows  # the flow had nothing left: forgotten


def test_a_quiet_live_capture_ends_on_the_node_clock():
    collector, emitted = collect()
    collector.add("packet", "dns", packet(T0, http_method="GET", http_uri="/a", l4_protocol="TCP", src_port=40000, dst_port=80))
    collector.add("packet", "dns", packet(T0 + 1_000_000, http_status=200, l4_protocol="TCP", src_ip="10.0.0.53", src_port=80,
                                          dst_ip="10.0.0.1", dst_port=40000))
    collector.tick()
    assert emitted == []  # the response may have more segments: it lingers
    collector.tick(wall_ns=T0 + 10 * S)  # no packet since, but the node's clock moved on
    [span] = emitted
    assert (span.request_resource, span.response_code, span.tap_side) == ("/a", 200, "SERVER_NIC")


def test_ticks_do_one_pass_per_half_second_of_watermark():
    collector, emitted = collect()
    collector.add("socket_data", "f6", data(True, REQ, T0, socket_id=6))
    passes = []
    original = FlowStage.next_deadline_ns
    FlowStage.next_deadline_ns = lambda self: passes.append(1) or original(self)
    try:
        for i in range(100):
            collector.tick(wall_ns=T0 + 10 * S + i * 1_000_000)  # 100 ticks within 0.1 s
    finally:
        FlowStage.next_deadline_ns = original
    assert len(passes) == 1


def test_dns_queries_at_a_nic_pair_by_id_and_an_unanswered_one_is_counted_at_exit():
    collector, emitted = collect()
    collector.add("packet", "dns", packet(T0, dns_id=1, dns_is_response=False, dns_query_name="a.test", dns_query_type="A"))
    collector.add("packet", "dns", packet(T0 + 10, dns_id=2, dns_is_response=False, dns_query_name="b.test", dns_query_type="A"))
    collector.add("packet", "dns", packet(T0 + 20, dns_id=2, dns_is_response=True, dns_rcode="NXDOMAIN", dns_answer_count=0,
                                          src_ip="10.0.0.53", src_port=53, dst_ip="10.0.0.1", dst_port=5353))
    assert [(s.request_resource, s.response_message, s.error_class) for s in emitted] == [("b.test", "NXDOMAIN", "CLIENT_ERROR")]
    collector.flush()
    assert collector.abandoned == 1 and len(emitted) == 1


def test_a_span_read_back_from_raw_spans_is_the_span_that_was_sent():
    collector, emitted = collect()
    collector.add("socket_data", "f1", data(True, REQ, T0))
    collector.add("socket_data", "f1", data(False, RESP, T0 + 3_000_000))
    [sent] = emitted
    schema = fastavro.parse_schema(NODE_SPANS.schema())
    record = fastavro.schemaless_reader(_avro(schema, sent.to_record()), schema, return_record_name=False)
    [read] = FlowStage(CONFIG).span(record)
    assert read.span_id == sent.span_id and read.to_record() == sent.to_record()
    assert span_from_state(json.loads(json.dumps(span_to_state(read)))).span_id == sent.span_id  # kept between a job's stages too
    old_state = json.loads(json.dumps(span_to_state(sent)))[:-1]  # a stage's state written before spans came from agents
    assert span_from_state(old_state).span_id == sent.span_id


@pytest.mark.parametrize("change", [{"start_time": T0 + 1, "end_time": T0}, {"end_time": 2**62}, {"sample_ratio": 0.0},
                                    {"request_bytes": -1}])
def test_a_span_record_no_agent_produces_is_refused(change):
    span = Span(protocol="HTTP", tap_side="CLIENT_PROCESS", host="n", start_ns=T0, end_ns=T0 + 5, flow_id="f", l4_protocol="TCP",
                client_ip="10.0.0.1", client_port=1, server_ip="10.0.0.2", server_port=80)
    with pytest.raises(InvalidEvent):
        Span.from_record(dict(span.to_record(), **change))


def test_the_stage_reads_a_span_at_its_end_time():
    span = Span(protocol="DNS", tap_side="SERVER_NIC", host="n", start_ns=T0, end_ns=T0 + 5, flow_id="f", l4_protocol="UDP",
                client_ip="10.0.0.1", client_port=1, server_ip="10.0.0.2", server_port=53)
    assert FlowStage.event_time_ns("span", span.to_record()) == T0 + 5
    assert dataclasses.replace(Span.from_record(span.to_record()), trace_id="t").span_id == span.span_id


def _avro(schema, record):
    import io

    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, record)
    out.seek(0)
    return out
