"""Four-point join, call chains, NIC spans and RED windows on hand-written inputs (golden tests)."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracetap.metrics import NetworkWindows, RedWindows, WindowConfig
from tracetap.model import Span, TapSide
from tracetap.nic import FlowPacketAssembler
from tracetap.paths import JoinConfig, PathJoiner
from tracetap.sketch import DDSketch
from tracetap.tracing import link_spans

MS = 1_000_000
FLOW = "tcp|10.0.0.1|40000|10.0.0.2|8080"


def span(side, start, end, *, seq=1000, flow=FLOW, trace=None, pid=None, host="node", headers=None, status=200, error=None, client="10.0.0.1",
         server="10.0.0.2", sport=8080, endpoint="GET /x", workload=(None, None), attrs=None, l4="TCP"):
    return Span("HTTP", side, host, start, end, flow, l4, client, 40000, server, sport, request_type="GET", request_resource="/x",
                endpoint=endpoint, response_code=status, error_class=error, req_tcp_seq=seq, syscall_trace_id_request=trace, pid=pid,
                trace_headers=headers or {}, client_workload=workload[0], server_workload=workload[1], attributes=attrs or {},
                identity=f"{side}|{pid}")


def test_four_points_join_into_a_path_with_every_segment():
    joiner = PathJoiner()
    points = [span(TapSide.CLIENT_PROCESS, 0, 100 * MS), span(TapSide.CLIENT_NIC, 1 * MS, 99 * MS),
              span(TapSide.SERVER_NIC, 3 * MS, 96 * MS), span(TapSide.SERVER_PROCESS, 4 * MS, 94 * MS)]
    out = []
    for p in reversed(points):  # arrival order does not matter
        out += joiner.add(p)
    [path] = out
    assert path["complete"] and path["points_seen"] == ["CLIENT_PROCESS", "CLIENT_NIC", "SERVER_NIC", "SERVER_PROCESS"]
    assert (path["req_client_stack_ns"], path["req_network_ns"], path["req_server_stack_ns"], path["server_processing_ns"]) == (1 * MS, 2 * MS, 1 * MS, 90 * MS)
    assert (path["resp_server_stack_ns"], path["resp_network_ns"], path["resp_client_stack_ns"]) == (2 * MS, 3 * MS, 1 * MS)
    assert (path["duration_ns"], path["req_tcp_seq"], path["client_process_span_id"]) == (100 * MS, 1000, points[0].span_id)
    assert len(joiner) == 0


def test_a_request_dnated_from_a_service_address_to_a_pod_joins_on_the_client_end_and_names_both_addresses():
    """kube-proxy: the client's socket and NIC see the ClusterIP 10.96.0.20:80, the server's the pod 10.0.0.2:8080;
    the client end 10.0.0.1:40000 and the sequence numbers are what both halves keep."""
    called = dict(server="10.96.0.20", sport=80, flow="tcp|10.0.0.1|40000|10.96.0.20|80")
    points = [span(TapSide.CLIENT_PROCESS, 0, 100 * MS, **called), span(TapSide.CLIENT_NIC, 1 * MS, 99 * MS, **called),
              span(TapSide.SERVER_NIC, 3 * MS, 96 * MS), span(TapSide.SERVER_PROCESS, 4 * MS, 94 * MS)]
    joiner = PathJoiner()
    out = []
    for p in points:
        out += joiner.add(p)
    [path] = out
    assert path["complete"] and path["server_processing_ns"] == 90 * MS and path["req_network_ns"] == 2 * MS
    assert (path["server_ip"], path["server_port"], path["service_ip"], path["service_port"]) == ("10.0.0.2", 8080, "10.96.0.20", 80)
    assert path["flow_id"] == "tcp|10.0.0.1|40000|10.96.0.20|80"  # the client's: the flow it opened


def test_a_client_that_called_a_service_address_takes_the_server_workload_from_the_servers_points():
    from tracetap.paths import share_workloads

    called = dict(server="10.96.0.20", sport=80, flow="tcp|10.0.0.1|40000|10.96.0.20|80")
    cp = span(TapSide.CLIENT_PROCESS, 0, 100 * MS, workload=("web", None), **called)
    sp = span(TapSide.SERVER_PROCESS, 4 * MS, 94 * MS, workload=(None, "oms-app"))
    other = span(TapSide.CLIENT_PROCESS, 0, 100 * MS, seq=7, workload=("web", None), **called)  # another request: left alone
    share_workloads([cp, sp, other])
    assert (cp.client_workload, cp.server_workload) == ("web", "oms-app")
    assert (sp.client_workload, sp.server_workload) == ("web", "oms-app")
    assert other.server_workload is None


def test_a_path_without_nat_names_no_service_address():
    joiner = PathJoiner()
    out = []
    for side in (TapSide.CLIENT_PROCESS, TapSide.CLIENT_NIC, TapSide.SERVER_NIC, TapSide.SERVER_PROCESS):
        out += joiner.add(span(side, 0, 10))
    assert (out[0]["service_ip"], out[0]["service_port"], out[0]["server_ip"]) == (None, None, "10.0.0.2")


def test_loopback_client_ends_of_two_hosts_do_not_join():
    joiner = PathJoiner()
    local = dict(client="127.0.0.1", server="127.0.0.1", flow="tcp|127.0.0.1|40000|127.0.0.1|8080")
    assert joiner.add(span(TapSide.CLIENT_PROCESS, 0, 10, host="node-a", **local)) == []
    assert joiner.add(span(TapSide.SERVER_PROCESS, 1, 9, host="node-b", **local)) == []
    assert len(joiner) == 2


def test_a_partial_path_is_emitted_when_the_window_passes_and_not_before():
    joiner = PathJoiner(JoinConfig(window_ns=50 * MS))
    joiner.add(span(TapSide.CLIENT_PROCESS, 0, 100 * MS))
    joiner.add(span(TapSide.SERVER_PROCESS, 4 * MS, 94 * MS))
    joiner.add(span(TapSide.CLIENT_PROCESS, 0, 100 * MS, seq=5000))
    assert joiner.expire(49 * MS) == []
    paths = joiner.expire(50 * MS)
    assert [(p["req_tcp_seq"], p["points_seen"], p["complete"], p["req_network_ns"]) for p in paths] == [
        (1000, ["CLIENT_PROCESS", "SERVER_PROCESS"], False, None), (5000, ["CLIENT_PROCESS"], False, None)]
    assert paths[0]["server_processing_ns"] == 90 * MS


def test_dns_joins_on_flow_and_id():
    joiner = PathJoiner()
    dns = dict(seq=None, flow="udp|10.0.0.1|5353|10.0.0.9|53", l4="UDP", attrs={"dns.id": "77"})
    out = []
    for side, start in ((TapSide.CLIENT_PROCESS, 0), (TapSide.CLIENT_NIC, 1), (TapSide.SERVER_NIC, 2), (TapSide.SERVER_PROCESS, 3)):
        out += joiner.add(span(side, start, 10 - start, **dns))
    assert len(out) == 1 and out[0]["complete"]


def _chain():
    """A (pid 1) serves a request and calls B; B (pid 2) serves it, calls C and does a DNS lookup (thread trace ids)."""
    a_in = span(TapSide.SERVER_PROCESS, 0, 100, seq=1, flow="f-user-a", pid=1, trace=501)
    a_to_b_cp = span(TapSide.CLIENT_PROCESS, 10, 90, seq=2, flow="f-a-b", pid=1, trace=501)
    a_to_b_sp = span(TapSide.SERVER_PROCESS, 12, 88, seq=2, flow="f-a-b", pid=2, trace=901)
    b_to_c_cp = span(TapSide.CLIENT_PROCESS, 20, 60, seq=3, flow="f-b-c", pid=2, trace=901)
    b_dns = span(TapSide.CLIENT_PROCESS, 15, 18, seq=None, flow="udp-b-dns", pid=2, trace=901, l4="UDP", attrs={"dns.id": "5"})
    b_to_c_sp = span(TapSide.SERVER_PROCESS, 22, 58, seq=3, flow="f-b-c", pid=3, trace=1301)
    return [a_in, a_to_b_cp, a_to_b_sp, b_to_c_cp, b_dns, b_to_c_sp]


def test_a_three_service_chain_links_into_one_trace():
    spans = _chain()
    a_in, a_to_b_cp, a_to_b_sp, b_to_c_cp, b_dns, b_to_c_sp = spans
    shuffled = spans[:]
    random.Random(4).shuffle(shuffled)
    link_spans(shuffled)
    assert a_in.parent_span_id is None
    assert a_to_b_cp.parent_span_id == a_in.span_id  # thread trace id in A
    assert a_to_b_sp.parent_span_id == a_to_b_cp.span_id  # the path A->B
    assert b_to_c_cp.parent_span_id == a_to_b_sp.span_id and b_dns.parent_span_id == a_to_b_sp.span_id  # thread trace id in B
    assert b_to_c_sp.parent_span_id == b_to_c_cp.span_id
    assert len({s.trace_id for s in spans}) == 1 and a_in.trace_id


def test_trace_ids_do_not_depend_on_input_order():
    first, second = _chain(), _chain()
    link_spans(first)
    link_spans(list(reversed(second)))
    assert [(s.span_id, s.parent_span_id, s.trace_id) for s in first] == [(s.span_id, s.parent_span_id, s.trace_id) for s in second]


def test_a_trace_header_links_a_call_made_from_another_thread():
    server = span(TapSide.SERVER_PROCESS, 0, 100, seq=1, flow="f1", pid=7, trace=10, headers={"x-request-id": "r-1"})
    call = span(TapSide.CLIENT_PROCESS, 5, 50, seq=2, flow="f2", pid=7, trace=None, headers={"x-request-id": "r-1"})
    other = span(TapSide.CLIENT_PROCESS, 5, 50, seq=3, flow="f3", pid=7, trace=None, headers={"x-request-id": "r-2"})
    link_spans([server, call, other])
    assert call.parent_span_id == server.span_id and other.parent_span_id is None and other.trace_id != server.trace_id


def _packet(t, src, dst, sport, dport, seq, payload, flags=0x18, **l7):
    base = {"host": "n", "time": t, "interface": "veth", "tap_point": "server-nic", "workload": "db", "l4_protocol": "TCP",
            "src_ip": src, "src_port": sport, "dst_ip": dst, "dst_port": dport, "tcp_seq": seq, "tcp_flags": flags, "payload_bytes": payload,
            "http_method": None, "http_uri": None, "http_host": None, "http_status": None, "dns_id": None, "dns_is_response": None,
            "dns_query_name": None, "dns_query_type": None, "dns_rcode": None, "dns_answer_count": None}
    base.update(l7)
    return base


def test_nic_spans_pair_packets_and_extend_to_the_last_response_segment():
    a = FlowPacketAssembler()
    c, s = ("10.0.0.1", 40000), ("10.0.0.2", 8080)
    out = a.add(_packet(0, c[0], s[0], c[1], s[1], 100, 80, http_method="GET", http_uri="/users/9?x=1", http_host="api"))
    out += a.add(_packet(5 * MS, s[0], c[0], s[1], c[1], 900, 1400, http_status=503))
    out += a.add(_packet(6 * MS, s[0], c[0], s[1], c[1], 2300, 600))
    assert out == []
    [nic] = a.add(_packet(7 * MS, s[0], c[0], s[1], c[1], 2900, 0, flags=0x11))  # FIN ends the response
    assert (nic.tap_side, nic.start_ns, nic.end_ns, nic.req_tcp_seq, nic.resp_tcp_seq) == (TapSide.SERVER_NIC, 0, 6 * MS, 100, 900)
    assert (nic.response_code, nic.error_class, nic.endpoint, nic.response_bytes, nic.server_workload) == (503, "SERVER_ERROR", "GET /users/{id}", 2000, "db")


def test_red_windows_count_errors_and_close_on_the_watermark():
    windows = RedWindows(WindowConfig(window_ns=10 * MS, allowed_lateness_ns=5 * MS))
    for end, error in ((1 * MS, None), (2 * MS, "SERVER_ERROR"), (9 * MS, "TIMEOUT"), (12 * MS, None)):
        assert windows.add_span(span(TapSide.SERVER_PROCESS, end - 1 * MS, end, error=error))
    assert windows.advance(14 * MS) == []  # window [0,10) closes at 10 + 5 ms of lateness
    [first] = windows.advance(15 * MS)
    assert (first["window_start"], first["window_end"], first["request_count"], first["error_count"]) == (0, 10, 3, 2)
    assert (first["server_error_count"], first["timeout_count"], first["latency_max_ns"], first["latency_sum_ns"]) == (1, 1, 1 * MS, 3 * MS)
    assert not windows.add_span(span(TapSide.SERVER_PROCESS, 0, 3 * MS)) and windows.late == 1  # its window was emitted
    [second] = windows.advance(30 * MS)
    assert second["request_count"] == 1 and second["metric_id"] != first["metric_id"]


@given(st.lists(st.integers(min_value=1, max_value=10**10), min_size=1, max_size=300), st.integers(1, 4))
@settings(max_examples=200)
def test_sketches_merge_exactly_and_quantiles_stay_within_one_percent(values, parts):
    whole = DDSketch()
    pieces = [DDSketch() for _ in range(parts)]
    for i, v in enumerate(values):
        whole.add(v)
        pieces[i % parts].add(v)
    merged = pieces[0]
    for piece in pieces[1:]:
        merged.merge(piece)
    assert merged.bins == whole.bins and merged.count == whole.count
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99):
        exact = ordered[int(q * (len(ordered) - 1))]
        assert abs(merged.quantile(q) - exact) <= 0.0101 * exact
    assert DDSketch.from_bytes(merged.to_bytes()).bins == merged.bins


def test_sketch_refuses_negative_values_and_foreign_bytes():
    with pytest.raises(ValueError):
        DDSketch().add(-1)
    with pytest.raises(ValueError):
        DDSketch.from_bytes(b"\x09garbage")


def _life(kind, t, role="CLIENT", **extra):
    event = {"kind": kind, "time": t, "role": role, "l4_protocol": "TCP", "local_ip": "10.0.0.1", "local_port": 40000,
             "remote_ip": "10.0.0.2", "remote_port": 5432, "srtt_us": None, "bytes_sent": None, "bytes_received": None}
    event.update(extra)
    return event


def test_network_metrics_per_pair_from_lifecycle_events():
    windows = NetworkWindows(WindowConfig(window_ns=10 * MS, allowed_lateness_ns=0))
    server_side = dict(role="SERVER", local_ip="10.0.0.2", local_port=5432, remote_ip="10.0.0.1", remote_port=40000)
    for event in (_life("CONNECT", 1), _life("CONNECT_FAILED", 2), _life("RETRANSMIT", 3), _life("RESET_RECEIVED", 4),
                  _life("RTT_SAMPLE", 5, srtt_us=100), _life("RTT_SAMPLE", 6, srtt_us=300, **server_side),
                  _life("CLOSE", 7, bytes_sent=1000, bytes_received=5000), _life("CLOSE", 8, bytes_sent=5000, bytes_received=1000, **server_side)):
        windows.add_event(event)
    [metric] = windows.advance(10 * MS)
    assert (metric["client_ip"], metric["server_ip"], metric["server_port"]) == ("10.0.0.1", "10.0.0.2", 5432)
    assert (metric["connects"], metric["failed_connects"], metric["retransmits"], metric["resets"]) == (1, 1, 1, 1)
    assert (metric["rtt_samples"], metric["rtt_mean_ns"], metric["rtt_max_ns"]) == (2, 200_000, 300_000)
    assert (metric["bytes_client_to_server"], metric["bytes_server_to_client"]) == (1000, 5000)  # the client's close only


def test_the_event_clock_counts_what_is_late_beyond_the_allowed_lateness():
    from tracetap.eventtime import EventClock

    clock = EventClock(max_out_of_order_ns=10, allowed_lateness_ns=5)
    assert clock.observe(100) and clock.watermark_ns == 90
    assert clock.observe(86) and clock.observe(85)  # behind the watermark, within the lateness
    assert not clock.observe(84) and clock.late == 1 and clock.watermark_ns == 90


def test_spans_are_tagged_from_resource_records_and_forget_tombstones():
    from tracetap.workloads import WorkloadIndex

    def resource(kind, **fields):
        base = {"kind": kind, "host": "node", "workload": None, "pid": None, "netns_inode": None, "netns_name": None, "ip": None}
        base.update(fields)
        return base

    index = WorkloadIndex()
    index.apply("netns|node|77", resource("NETNS", netns_inode=77, netns_name="pod-orders"))
    index.apply("process|node|10", resource("PROCESS", pid=10, netns_inode=77))
    index.apply("ip|node|10.0.0.2", resource("IP_ADDRESS", ip="10.0.0.2", workload="payments"))
    index.apply("ip|node|127.0.0.1", resource("IP_ADDRESS", ip="127.0.0.1", netns_inode=77))
    client = span(TapSide.CLIENT_PROCESS, 0, 10, pid=10)
    index.tag(client)
    assert (client.client_workload, client.server_workload) == ("pod-orders", "payments")
    index.apply("ip|node|10.0.0.2", None)
    fresh = index.tag(span(TapSide.CLIENT_PROCESS, 0, 10, pid=10))
    assert (fresh.client_workload, fresh.server_workload) == ("pod-orders", None) and "127.0.0.1" not in index.addresses


def test_ids_have_w3c_sizes_and_a_callers_traceparent_gives_the_trace_its_id():
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    server = span(TapSide.SERVER_PROCESS, 0, 100 * MS, pid=1, trace=9, headers={"traceparent": tp})
    call = span(TapSide.CLIENT_PROCESS, 10 * MS, 20 * MS, pid=1, trace=9, seq=77, flow="tcp|10.0.0.2|41000|10.0.0.3|80")
    alone = span(TapSide.CLIENT_PROCESS, 0, 5 * MS, pid=2, seq=99, flow="tcp|10.0.0.5|41000|10.0.0.3|80")
    linked = link_spans([alone, call, server])
    assert all(len(s.span_id) == 16 and int(s.span_id, 16) >= 0 and s.span_id == s.span_id.lower() for s in linked)
    assert call.parent_span_id == server.span_id
    assert server.trace_id == call.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert len(alone.trace_id) == 32 and alone.trace_id != server.trace_id


@pytest.mark.parametrize("header", ["00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
                                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # the invalid all-zero id
                                    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # the forbidden version
                                    "00-4bf92f3577b34da6a3ce929d0e0e4736-01", "garbage"])
def test_a_traceparent_that_is_not_w3c_leaves_the_trace_its_own_id(header):
    server = span(TapSide.SERVER_PROCESS, 0, 100 * MS, pid=1, headers={"traceparent": header})
    [linked] = link_spans([server])
    assert len(linked.trace_id) == 32 and "4bf92f35" not in linked.trace_id
