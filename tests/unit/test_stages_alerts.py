"""The stages engines host (the flow stage, and the keyed stages after it as KeyedPipeline runs them) and
the alert rules, on hand-written spans; expected figures are worked out by hand in each test. The keyed
stages' own tests (call chains, hop trace ids, state) are in test_keyed_stages.py."""

import dataclasses

from tracetap.alerts import AlertConfig, RegressionTracker
from tracetap.metrics import WindowConfig
from tracetap.model import Span, TapSide
from tracetap.pipeline import KeyedPipeline
from tracetap.stages import StageConfig

S = 1_000_000_000
MS = 1_000_000
T0 = 1_800_000_000 * S  # a window boundary (10 s windows)


def dns_span(workload, start, rcode, qid, name="api.tpp.svc.cluster.local"):
    return Span("DNS", TapSide.CLIENT_PROCESS, "node", start, start + MS, f"udp|{workload}|{qid}", "UDP", "10.0.0.9", 40000 + qid,
                "10.0.0.53", 53, request_type="A", request_resource=name, response_message=rcode,
                error_class="CLIENT_ERROR" if rcode == "NXDOMAIN" else None, client_workload=workload,
                attributes={"dns.id": str(qid)}, identity=f"{workload}|{qid}")


def http_span(side, start, end, *, seq, trace=None, pid=1, server="10.0.0.2", port=8080, path="/x", status=200, workload="svc"):
    return Span("HTTP", side, "node", start, end, f"tcp|10.0.0.1|40000|{server}|{port}", "TCP", "10.0.0.1", 40000, server, port,
                request_type="GET", request_resource=path, endpoint=f"GET {path}", response_code=status,
                error_class="SERVER_ERROR" if status >= 500 else None, req_tcp_seq=seq, syscall_trace_id_request=trace, pid=pid,
                server_workload=workload, identity=f"{side}|{pid}|{seq}")


def config(**alerts):
    return StageConfig(windows=WindowConfig(window_ns=10 * S), alerts=AlertConfig(**alerts), trace_gap_ns=1 * S)


def test_a_dns_storm_names_the_flooding_pods_with_their_rate_and_nxdomain_ratio():
    stage = KeyedPipeline(config())
    # tpp-pay-1: 200 queries in the window, 160 NXDOMAIN (search-path expansion); web: 5 healthy queries
    for i in range(200):
        assert stage.span(dns_span("tpp-pay-1", T0 + i * 40 * MS, "NXDOMAIN" if i % 5 else "NOERROR", i))
    for i in range(5):
        assert stage.span(dns_span("web", T0 + i * S, "NOERROR", 1000 + i))
    out = stage.advance(final=True)
    storms = [a for a in out.alerts if a["kind"] == "DNS_STORM"]
    assert len(storms) == 1
    storm = storms[0]
    assert storm["workloads"] == ["tpp-pay-1"] and storm["workload"] == "tpp-pay-1"
    assert storm["measurements"]["dns_queries_per_s"] == 20.0  # 200 queries / 10 s
    assert storm["measurements"]["nxdomain_ratio"] == 0.8  # 160 / 200
    assert "ndots" in storm["suggestion"]


def test_a_p99_far_above_the_recent_windows_is_a_regression():
    tracker = RegressionTracker(AlertConfig(regression_factor=2.0, regression_min_delta_ns=50 * MS, regression_min_requests=5))

    def window(i, p99_ms):
        return {"tap_side": "SERVER_PROCESS", "request_count": 10, "server_workload": "acuiagwapp", "endpoint": "GET /retail",
                "latency_p99_ns": p99_ms * MS, "window_start": i * 10_000, "metric_id": f"m{i}"}

    assert [tracker.check(window(i, p99)) for i, p99 in enumerate((20, 22, 18, 21))] == [None] * 4
    alert = tracker.check(window(4, 500))
    assert alert["kind"] == "LATENCY_REGRESSION" and alert["workload"] == "acuiagwapp"
    assert alert["measurements"]["baseline_p99_ns"] == 20.5 * MS  # the median of 20, 22, 18, 21 ms
    assert tracker.check(window(5, 40)) is None  # 40 ms is under 2 x the median, now of 20, 22, 18, 21, 500


def test_a_502_with_a_failed_dns_answer_in_its_trace_raises_a_failed_dependency():
    stage = KeyedPipeline(config())
    server = http_span(TapSide.SERVER_PROCESS, T0, T0 + 20 * MS, seq=100, trace=9, pid=4, status=502, workload="gateway")
    lookup = dataclasses.replace(dns_span("gateway", T0 + 2 * MS, "NXDOMAIN", 77, name="backend.svc"), pid=4, syscall_trace_id_request=9)
    assert stage.span(server) and stage.span(lookup)
    out = stage.advance(final=True)
    failed = [a for a in out.alerts if a["kind"] == "ERROR_WITH_FAILED_DEPENDENCY"]
    assert len(failed) == 1
    assert failed[0]["attributes"] == {"dependency": "DNS", "dns.rcode": "NXDOMAIN", "dns.name": "backend.svc"}
    assert failed[0]["workload"] == "gateway" and lookup.span_id in failed[0]["span_ids"]


def relayed_502():
    """web (pid 3) serves a request (thread trace 5), calls gateway (seq 200); gateway (pid 4, trace 9) fails to
    resolve its backend and answers 502, which web passes on as its own 502: (web, call, gateway, lookup)."""
    web = http_span(TapSide.SERVER_PROCESS, T0, T0 + 30 * MS, seq=100, trace=5, pid=3, status=502, workload="web")
    call = http_span(TapSide.CLIENT_PROCESS, T0 + 1 * MS, T0 + 25 * MS, seq=200, trace=5, pid=3, server="10.0.0.3", status=502,
                     workload="gateway")
    gateway = http_span(TapSide.SERVER_PROCESS, T0 + 2 * MS, T0 + 24 * MS, seq=200, trace=9, pid=4, server="10.0.0.3", status=502,
                        workload="gateway")
    lookup = dataclasses.replace(dns_span("gateway", T0 + 3 * MS, "NXDOMAIN", 78, name="payment-backend.svc"), pid=4,
                                 syscall_trace_id_request=9)
    return web, call, gateway, lookup


def test_a_502_passed_on_by_callers_is_blamed_on_the_service_whose_lookup_failed():
    stage = KeyedPipeline(config())
    web, call, gateway, lookup = relayed_502()
    for span in (web, call, gateway, lookup):
        assert stage.span(span)
    out = stage.advance(final=True)
    failed = [a for a in out.alerts if a["kind"] == "ERROR_WITH_FAILED_DEPENDENCY"]
    assert len(failed) == 1
    assert failed[0]["workload"] == "gateway" and failed[0]["span_ids"] == [gateway.span_id, lookup.span_id]
    assert failed[0]["summary"].startswith("GET /x returned 502 from gateway: DNS NXDOMAIN for payment-backend.svc")


def test_a_flow_forgets_assemblers_idle_past_the_idle_state_time():
    from tracetap.stages import FlowStage

    stage = FlowStage(dataclasses.replace(config(), idle_state_ns=60 * S))
    query = {"host": "node", "start_time": T0, "end_time": T0 + 1000, "pid": 5, "tid": 5, "comm": "app", "socket_id": 9,
             "direction": "EGRESS", "bytes": 32, "l4_protocol": "UDP", "local_ip": "10.0.0.1", "local_port": 40000,
             "remote_ip": "10.0.0.53", "remote_port": 53, "role": "UNKNOWN", "tcp_seq": None, "syscall_trace_id": None,
             "payload": bytes.fromhex("04d20100000100000000000005737461636b0373766304746573740000010001")}
    answer = dict(query, start_time=T0 + 5000, end_time=T0 + 6000, direction="INGRESS",
                  payload=bytes.fromhex("04d28183000100000000000005737461636b0373766304746573740000010001"))
    assert stage.socket_data(query) == []
    assert [s.response_message for s in stage.socket_data(answer)] == ["NXDOMAIN"]
    assert stage.advance(T0 + 59 * S) == [] and not stage.empty  # idle, but not for long enough
    assert stage.advance(T0 + 61 * S) == [] and stage.empty


def test_a_flow_names_its_next_deadline_and_advancing_to_it_does_the_work():
    from tracetap.stages import FlowStage

    stage = FlowStage(dataclasses.replace(config(), idle_state_ns=60 * S))
    assert stage.next_deadline_ns() is None  # nothing held, no timer
    request = {"host": "node", "start_time": T0, "end_time": T0 + 1000, "pid": 5, "tid": 5, "comm": "app", "socket_id": 9,
               "direction": "EGRESS", "bytes": 18, "l4_protocol": "TCP", "local_ip": "10.0.0.1", "local_port": 40000,
               "remote_ip": "10.0.0.2", "remote_port": 80, "role": "CLIENT", "tcp_seq": 1, "syscall_trace_id": None,
               "payload": b"GET / HTTP/1.1\r\n\r\n"}
    assert stage.socket_data(request) == []
    timeout = stage.config.assembly.request_timeout_ns
    assert stage.next_deadline_ns() == T0 + timeout  # the open request's timeout
    assert stage.advance(T0 + timeout - 1) == []
    [span] = stage.advance(T0 + timeout)
    assert span.error_class == "TIMEOUT" and span.end_ns == T0 + timeout
    assert stage.next_deadline_ns() == T0 + 1000 + 60 * S  # then only the idle socket's eviction
    assert stage.advance(T0 + 1000 + 60 * S) == [] and stage.empty and stage.next_deadline_ns() is None


def test_a_close_that_arrives_before_the_sockets_last_data_waits_for_the_watermark():
    from tracetap.stages import FlowStage

    stage = FlowStage(config())
    base = {"host": "node", "pid": 5, "tid": 5, "comm": "app", "socket_id": 9, "l4_protocol": "TCP", "local_ip": "10.0.0.1",
            "local_port": 40000, "remote_ip": "10.0.0.2", "remote_port": 80, "role": "CLIENT", "syscall_trace_id": None}
    request = dict(base, start_time=T0, end_time=T0 + 1000, direction="EGRESS", bytes=18, tcp_seq=1, payload=b"GET / HTTP/1.1\r\n\r\n")
    body = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    response = dict(base, start_time=T0 + 3 * S, end_time=T0 + 3 * S + 1000, direction="INGRESS", bytes=len(body), tcp_seq=1,
                    payload=body)
    close = {"host": "node", "time": T0 + 3 * S + 5000, "kind": "CLOSE", "pid": 5, "socket_id": 9}
    assert stage.socket_data(request) == []
    assert stage.lifecycle(close) == []  # the lifecycle topic was read first: the response is still on its way
    assert stage.next_deadline_ns() == T0 + 3 * S + 5000
    [span] = stage.socket_data(response)
    assert span.response_code == 200 and span.duration_ns == 3 * S + 1000 and not span.connection_closed  # request start to response end
    assert stage.advance(T0 + 3 * S + 4999) == [] and not stage.empty
    assert stage.advance(T0 + 3 * S + 5000) == [] and stage.empty  # closed at its time, nothing cut off

    early = FlowStage(config())  # the CLOSE read before any of the socket's data: it still ends the socket
    assert early.lifecycle(close) == [] and not early.empty
    early.socket_data(request)
    headers = body.replace(b"Length: 0", b"Length: 12")
    assert early.socket_data(dict(response, bytes=len(headers), payload=headers)) == []  # its 12-byte body never came
    [span] = early.advance(T0 + 3 * S + 5000)
    assert span.response_code == 200 and early.empty

    cut = FlowStage(config())  # a request with no response by its socket's close is still cut off, at the close
    cut.socket_data(request)
    cut.lifecycle(dict(close, time=T0 + 2 * S))
    [span] = cut.advance(T0 + 2 * S)
    assert span.connection_closed and span.response_message == "connection closed before the response" and span.end_ns == T0 + 2 * S


def test_lateness_is_judged_against_the_watermark_the_engine_sets():
    stage = KeyedPipeline(config())  # 5 s allowed lateness
    stage.engine_watermark(T0 + 10 * S)
    assert stage.span(dns_span("web", T0 + 9500 * MS, "NOERROR", 1))
    assert not stage.span(dns_span("web", T0 + 4 * S, "NOERROR", 2))  # 6 s behind the watermark: late
    assert stage.late_spans == 1
    assert stage.advance().spans == []  # ends 0.5 s before the watermark: its conversation's 1 s gap has not passed
    stage.engine_watermark(T0 + 20 * S)
    assert len(stage.advance().spans) == 1


def test_a_replayed_lifecycle_event_is_counted_once():
    stage = KeyedPipeline(config())
    close = {"host": "node", "time": T0 + S, "kind": "CLOSE", "pid": 7, "tid": 7, "comm": "app", "socket_id": 3, "netns_inode": 1,
             "l4_protocol": "TCP", "local_ip": "10.0.0.1", "local_port": 40000, "remote_ip": "10.0.0.2", "remote_port": 80,
             "role": "CLIENT", "old_state": None, "new_state": None, "error_code": None, "error_name": None, "srtt_us": None,
             "bytes_sent": 100, "bytes_received": 200, "retransmits": 2}
    assert stage.lifecycle(close) and stage.lifecycle(dict(close))  # a worker restarted upstream sends it again
    [metric] = stage.advance(final=True).network
    assert (metric["bytes_client_to_server"], metric["bytes_server_to_client"]) == (100, 200)  # not 200, 400
    assert stage.counters.duplicate_lifecycle == 1


def test_the_final_advance_closes_the_window_of_a_timeout_later_than_any_time_seen():
    """A timeout's span comes from the watermark (no source partition): its end may lie in a window after the
    latest event time any partition saw, and a final flush still emits that window."""
    stage = KeyedPipeline(config())
    assert stage.span(http_span(TapSide.SERVER_PROCESS, T0 + 1 * S, T0 + 2 * S, seq=1))
    assert stage.span(http_span(TapSide.SERVER_PROCESS, T0 + 3 * S, T0 + 33 * S, seq=2, status=504))  # a timeout, 3 windows on
    out = stage.advance(final=True)
    assert sorted((r["window_start"], r["request_count"]) for r in out.red) == [(T0 // MS, 1), ((T0 + 30 * S) // MS, 1)]
    assert stage.open_windows == 0


def _hop(side, start_ms, end_ms, *, client, server, seq, pid, thread, workloads):
    (cip, cport), (sip, sport) = client, server
    return Span("HTTP", side, "node", T0 + start_ms * MS, T0 + end_ms * MS, f"tcp|{cip}|{cport}|{sip}|{sport}", "TCP", cip, cport, sip, sport,
                request_type="GET", request_resource="/orders/1", endpoint="GET /orders/1", response_code=200, req_tcp_seq=seq,
                syscall_trace_id_request=thread, pid=pid, client_workload=workloads[0], server_workload=workloads[1],
                identity=f"{side}|{pid}|{seq}")


def test_a_slow_middle_service_is_blamed_by_its_self_time_not_its_caller():
    """web -> gateway -> oms-app: gateway makes a 50 ms call to oms-app, then spends 2.2 s of its own. web's request
    takes 2.3 s but its own time is 20 ms; the alert names gateway, by the time that is its own."""
    c, s = TapSide.CLIENT_PROCESS, TapSide.SERVER_PROCESS
    web, gateway, oms = ("10.0.0.1", 8080), ("10.0.0.2", 8080), ("10.0.0.3", 8080)
    spans = [
        _hop(s, 0, 2300, client=("10.0.0.9", 50000), server=web, seq=10, pid=1, thread=5, workloads=(None, "web")),
        _hop(c, 10, 2290, client=("10.0.0.1", 41000), server=gateway, seq=20, pid=1, thread=5, workloads=("web", None)),
        _hop(s, 11, 2281, client=("10.0.0.1", 41000), server=gateway, seq=20, pid=2, thread=6, workloads=(None, "gateway")),
        _hop(c, 20, 70, client=("10.0.0.2", 42000), server=oms, seq=30, pid=2, thread=6, workloads=("gateway", None)),
        _hop(s, 21, 69, client=("10.0.0.2", 42000), server=oms, seq=30, pid=3, thread=7, workloads=(None, "oms-app")),
    ]
    stage = KeyedPipeline(config(slow_request_ns=1 * S))
    for span in spans:
        assert stage.span(span)
    out = stage.advance(final=True)
    [slow] = [a for a in out.alerts if a["kind"] == "SLOW_REQUEST"]
    gateway_server = spans[2].span_id
    assert slow["workload"] == "gateway" and slow["attributes"]["culprit_span_id"] == gateway_server
    assert slow["attributes"]["segment"] == "server_processing_ns"  # the path's segment: the time is in gateway's application
    assert slow["measurements"]["server_own_ns"] == (2270 - 50) * MS  # 2,270 ms served, less the 50 ms call to oms-app
    assert slow["measurements"]["duration_ns"] == 2270 * MS  # the request as gateway served it
    by_id = {r["span_id"]: r for r in out.spans}
    assert len(by_id) == 5
    trace = [by_id[span.span_id]["trace_id"] for span in spans]
    assert trace[1] == trace[2] and trace[3] == trace[4] and trace[2] != trace[3]  # one trace id per hop
    assert [by_id[span.span_id]["parent_span_id"] for span in spans] == [None, spans[0].span_id, spans[1].span_id, spans[2].span_id,
                                                                          spans[3].span_id]
    assert by_id[spans[1].span_id]["server_workload"] == "gateway"  # the caller's span takes the callee's workload from its path
