"""The keyed stages (conversation, process, series) run together by KeyedPipeline: one-hop traffic left as it
came and counted once, per-hop trace ids and process-local blame on a call chain, and state that survives
JSON. Expected figures are worked out by hand in each test."""

import dataclasses

import orjson

from benchmarks.core_pipeline import timed_events
from tests.unit.test_stages_alerts import MS, S, T0, config, dns_span, http_span, relayed_502
from tracetap.keyed import ConversationStage, ProcessStage, SeriesStage, conversation_of
from tracetap.model import TapSide
from tracetap.pipeline import KeyedPipeline
from tracetap.stages import FlowStage


def _run(pipeline, spans):
    for span in spans:
        assert pipeline.span(span)
    return pipeline.advance(final=True)


def test_one_hop_traffic_leaves_every_span_once_as_it_came_and_counts_it_once():
    """Client-side keep-alive HTTP, Redis and DNS (timed_events), one hop: each span leaves once, as the flow stage
    made it but for its trace id (its own, unless a trace header links it), with one path record each, and is
    counted once in its RED window."""
    flows, spans = {}, []
    for key, record in timed_events(6000, T0, spacing=50):
        spans += flows.setdefault(key, FlowStage()).socket_data(record)
    for stage in flows.values():
        spans += stage.advance(2**61)
    got = _run(KeyedPipeline(config()), spans)
    made = {span.span_id: span.to_record() for span in spans}
    assert len(made) == len(spans) > 2000
    assert sorted(r["span_id"] for r in got.spans) == sorted(made)
    assert all({k: v for k, v in r.items() if k != "trace_id"} == {k: v for k, v in made[r["span_id"]].items() if k != "trace_id"}
               for r in got.spans)
    trace_of = {r["span_id"]: r["trace_id"] for r in got.spans}
    unlinked = [span.span_id for span in spans if not span.trace_headers]  # Redis and DNS (the HTTP requests share a traceparent)
    assert len(unlinked) > 1000 and len({trace_of[span_id] for span_id in unlinked}) == len(unlinked)
    assert sorted(p["client_process_span_id"] for p in got.paths) == sorted(made)  # a path record per request
    per_endpoint = {}
    for span in spans:
        per_endpoint[(span.tap_side.value, span.endpoint)] = per_endpoint.get((span.tap_side.value, span.endpoint), 0) + 1
    counted = {}
    for r in got.red:
        counted[(r["tap_side"], r["endpoint"])] = counted.get((r["tap_side"], r["endpoint"]), 0) + r["request_count"]
    assert counted == per_endpoint


def _chain(slow_ms=3000, c_ms=20):
    """A (pid 1, thread 5) calls B (seq 100); B (pid 2, thread 7), while serving, calls C (seq 500, pid 3).
    B holds `slow_ms` itself; C takes `c_ms`."""
    b_total = (slow_ms + c_ms + 10) * MS
    a_to_b = [http_span(side, T0 + d, T0 + b_total + 2 * MS - d, seq=100, trace=5 if side is TapSide.CLIENT_PROCESS else 7,
                        pid=1 if side is TapSide.CLIENT_PROCESS else 2, workload="b")
              for side, d in ((TapSide.CLIENT_PROCESS, 0), (TapSide.SERVER_PROCESS, 1 * MS))]
    b_to_c = [http_span(side, T0 + 5 * MS + d, T0 + 5 * MS + (c_ms + 2) * MS - d, seq=500,
                        trace=7 if side is TapSide.CLIENT_PROCESS else 9, pid=2 if side is TapSide.CLIENT_PROCESS else 3,
                        server="10.0.0.3", path="/c", workload="c")
              for side, d in ((TapSide.CLIENT_PROCESS, 0), (TapSide.SERVER_PROCESS, 1 * MS))]
    return a_to_b, b_to_c


def test_a_three_service_chain_with_a_slow_middle_blames_the_middle_and_links_every_hop():
    a_to_b, b_to_c = _chain()
    out = _run(KeyedPipeline(config(slow_request_ns=1 * S)), a_to_b + b_to_c)
    spans = {(s["server_ip"], s["tap_side"]): s for s in out.spans}
    a_call, b_served = spans[("10.0.0.2", "CLIENT_PROCESS")], spans[("10.0.0.2", "SERVER_PROCESS")]
    b_call, c_served = spans[("10.0.0.3", "CLIENT_PROCESS")], spans[("10.0.0.3", "SERVER_PROCESS")]
    assert a_call["trace_id"] == b_served["trace_id"] and b_call["trace_id"] == c_served["trace_id"]  # one id per hop
    assert b_served["parent_span_id"] == a_call["span_id"] and c_served["parent_span_id"] == b_call["span_id"]
    assert b_call["parent_span_id"] == b_served["span_id"]  # across the hop, within B's process
    [slow] = [a for a in out.alerts if a["kind"] == "SLOW_REQUEST"]
    assert slow["workload"] == "b" and slow["attributes"]["culprit_span_id"] == b_served["span_id"]
    assert slow["measurements"]["server_own_ns"] == (3030 - 22) * MS  # B served for 3030 ms, of which its call to C took 22
    assert slow["trace_id"] == b_served["trace_id"]
    assert len(out.paths) == 2 and {p["trace_id"] for p in out.paths} == {b_served["trace_id"], c_served["trace_id"]}


def test_a_slow_last_service_is_blamed_there_not_on_its_callers():
    a_to_b, b_to_c = _chain(slow_ms=10, c_ms=2500)
    out = _run(KeyedPipeline(config(slow_request_ns=1 * S)), a_to_b + b_to_c)
    [slow] = [a for a in out.alerts if a["kind"] == "SLOW_REQUEST"]
    c_served = next(s for s in out.spans if s["server_ip"] == "10.0.0.3" and s["tap_side"] == "SERVER_PROCESS")
    assert slow["workload"] == "c" and slow["attributes"]["culprit_span_id"] == c_served["span_id"]


def test_a_slow_call_to_an_untraced_dependency_is_blamed_on_the_call():
    a_to_b, b_to_c = _chain(slow_ms=10, c_ms=2500)
    out = _run(KeyedPipeline(config(slow_request_ns=1 * S)), a_to_b + b_to_c[:1])  # C's process is not traced
    [slow] = [a for a in out.alerts if a["kind"] == "SLOW_REQUEST"]
    assert slow["workload"] == "c" and slow["attributes"]["segment"] == "dependency_ns"
    assert slow["attributes"]["culprit_span_id"] == b_to_c[0].span_id and slow["measurements"]["dependency_ns"] == 2502 * MS


def test_a_502_passed_on_by_callers_is_blamed_on_the_service_whose_lookup_failed():
    web, call, gateway, lookup = relayed_502()
    out = _run(KeyedPipeline(config()), [web, call, gateway, lookup])
    [failed] = [a for a in out.alerts if a["kind"] == "ERROR_WITH_FAILED_DEPENDENCY"]
    assert failed["workload"] == "gateway" and failed["span_ids"] == [gateway.span_id, lookup.span_id]
    assert failed["summary"].startswith("GET /x returned 502 from gateway: DNS NXDOMAIN for payment-backend.svc")


def test_a_dns_storm_is_raised_per_flooding_workload():
    spans = [dns_span("tpp-pay-1", T0 + i * 40 * MS, "NXDOMAIN" if i % 5 else "NOERROR", i) for i in range(200)]
    spans += [dns_span("web", T0 + i * S, "NOERROR", 1000 + i) for i in range(5)]
    out = _run(KeyedPipeline(config()), spans)
    [storm] = [a for a in out.alerts if a["kind"] == "DNS_STORM"]
    assert storm["workloads"] == ["tpp-pay-1"] and storm["measurements"]["dns_queries_per_s"] == 20.0
    assert storm["measurements"]["nxdomain_ratio"] == 0.8


def test_replays_are_dropped_and_late_spans_refused():
    pipeline = KeyedPipeline(config())
    first = dns_span("web", T0 + 60 * S, "NOERROR", 1)
    assert pipeline.span(first) and pipeline.span(dataclasses.replace(first))
    pipeline.engine_watermark(T0 + 61 * S)
    pipeline.advance()
    assert not pipeline.span(dns_span("web", T0, "NOERROR", 2))  # 61 s behind the watermark, 5 s allowed
    assert pipeline.late_spans == 1 and pipeline.counters.duplicate_spans == 1


def test_an_advance_touches_only_the_keys_with_work_due():
    pipeline = KeyedPipeline(config())
    for i in range(100):
        assert pipeline.span(dns_span(f"w{i}", T0 + i * S, "NOERROR", i))
    assert pipeline.open_keys["conversation"] == 100
    pipeline.engine_watermark(T0 + 10 * S)
    out = pipeline.advance()  # the 9 queries ending by 10 s less the 1 s trace gap leave their conversations ...
    assert pipeline.counters.hops == 9
    assert len(out.spans) == 8  # ... and the 8 ending by 10 s less two gaps their processes
    # their ids are remembered against replays until 3 gaps and the 5 s lateness behind: those of 0 s and 1 s are gone
    assert pipeline.open_keys["conversation"] == 98
    assert min(pipeline._due["conversation"])[0] == T0 + 9 * S + MS + 1 * S  # the next work: query 9, a gap after its end


def test_each_stage_survives_its_state_through_json():
    a_to_b, b_to_c = _chain()
    cfg = config(slow_request_ns=1 * S)
    conversation = ConversationStage(cfg)
    for span in a_to_b:
        assert conversation.span(span, 0)
    again = ConversationStage.from_state(orjson.loads(orjson.dumps(conversation.to_state())), cfg)
    pipeline = KeyedPipeline(cfg)
    routed, routed_again = conversation.advance(2**61, pipeline.workloads), again.advance(2**61, pipeline.workloads)
    assert [(r.to, r.key) for r in routed] == [(r.to, r.key) for r in routed_again]
    process = ProcessStage(cfg)
    for route in routed:
        if route.to == "process":
            process.span(*route.item[1:])
    process_again = ProcessStage.from_state(orjson.loads(orjson.dumps(process.to_state())), cfg)
    assert process.advance(2**61, final=True) == process_again.advance(2**61, final=True)
    series = SeriesStage(cfg)
    for route in routed:
        if route.to == "series":
            series.span(route.key, route.item[1])
    series_again = SeriesStage.from_state(orjson.loads(orjson.dumps(series.to_state())), cfg)
    assert series.advance(2**61, final=True) == series_again.advance(2**61, final=True)
    assert conversation_of(a_to_b[0]) == conversation_of(a_to_b[1]) == "TCP|10.0.0.1|40000"


def test_the_pipeline_survives_its_state_through_json_and_goes_on_after_an_idle_flush():
    cfg = config(slow_request_ns=1 * S)
    a_to_b, b_to_c = _chain()
    pipeline = KeyedPipeline(cfg)
    for span in a_to_b + b_to_c[:1]:
        assert pipeline.span(span)
    pipeline.engine_watermark(T0)
    again = KeyedPipeline.from_state(orjson.loads(orjson.dumps(pipeline.to_state())), cfg)
    for p in (pipeline, again):
        assert p.has_open_work and p.waiting_spans == 3
        assert p.span(b_to_c[1])
    first, second = pipeline.advance(final=True), again.advance(final=True)
    assert first == second and len(first.spans) == 4 and not pipeline.has_open_work
    # an idle flush closes the open windows, not the ones to come: a later span is counted in its own window
    later = dns_span("web", T0 + 60 * S, "NOERROR", 1)
    assert pipeline.span(later)
    out = pipeline.advance(final=True)
    assert [r["request_count"] for r in out.red] == [1] and pipeline.counters.late_in_windows == 0
