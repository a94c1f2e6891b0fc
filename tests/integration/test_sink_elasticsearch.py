"""`tracetap sink elasticsearch` against the real Kafka, registry and Elasticsearch: mappings and queries,
Elasticsearch stopped and started under load, the sink killed mid-batch, two sinks in one group, and a
record the mapping refuses. Records come from the core's own stages, so they are what the stream jobs emit."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from benchmarks.core_pipeline import timed_events
from infra import processes
from schemas.catalog import ALERTS, DEAD_LETTER, NETWORK_METRICS, PATHS, RED_METRICS, SPANS
from schemas.producer import AvroProducer
from schemas.serde import AvroDeserializer
from sinks.elasticsearch import es_client, index_name, run_sink
from tests.kafka_helpers import read_until_idle
from tracetap.pipeline import KeyedPipeline
from tracetap.stages import FlowStage

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
S = 1_000_000_000


def _outputs(events, start_ns):
    """Spans, paths, RED and network metrics from the core on `events` request/response syscalls, and one alert."""
    flows, trace = {}, KeyedPipeline()
    for key, r in timed_events(events, start_ns, spacing=100, host="it"):
        for span in flows.setdefault(key, FlowStage()).socket_data(r):
            assert trace.span(span)
    close = {"host": "it", "time": start_ns + S, "kind": "CLOSE", "pid": 7, "tid": 7, "comm": "app", "socket_id": 3, "netns_inode": 1,
             "l4_protocol": "TCP", "local_ip": "10.0.0.1", "local_port": 40000, "remote_ip": "10.0.0.2", "remote_port": 80,
             "role": "CLIENT", "old_state": None, "new_state": None, "error_code": None, "error_name": None, "srtt_us": None,
             "bytes_sent": 100, "bytes_received": 200, "retransmits": 2}
    assert trace.lifecycle(close)
    out = trace.advance(final=True)
    alert = {"alert_id": uuid.uuid4().hex, "time": start_ns + 2 * S, "kind": "SLOW_REQUEST", "severity": "WARNING", "workload": "oms-app",
             "summary": "GET /orders took 3.1 s", "suggestion": None, "trace_id": out.spans[0]["trace_id"], "span_ids": [out.spans[0]["span_id"]],
             "workloads": ["web", "oms-app"], "attributes": {"segment": "server_own_ns"},
             # a DNS storm's per-pod figures: keys with dots, which Elasticsearch turns into objects
             "measurements": {"duration_ms": 3100.0, "tpp-pay-1.dns_queries_per_s": 41.6, "tpp-pay-1.nxdomain_ratio": 0.75}}
    return {SPANS: out.spans, PATHS: out.paths, RED_METRICS: out.red, NETWORK_METRICS: out.network, ALERTS: [alert]}


def _produce(settings, registry, records):
    producer = AvroProducer(settings, registry)
    for spec, batch in records.items():
        key = {SPANS: "flow_id", PATHS: "flow_id", ALERTS: "alert_id"}.get(spec, "metric_id")
        for record in batch:
            producer.produce(spec, record[key], record)
    producer.flush()


def _ids(es, settings, spec, id_field):
    es.indices.refresh(index=index_name(settings.elasticsearch, spec))
    hits = es.search(index=index_name(settings.elasticsearch, spec), size=10_000, source=[id_field], query={"match_all": {}})["hits"]
    return [h["_id"] for h in hits["hits"]]


@pytest.fixture(scope="module")
def indexed(own_topics, registry):
    settings = own_topics
    records = _outputs(2000, time.time_ns() - 600 * S)
    _produce(settings, registry, records)
    report = run_sink(settings, group_id=f"it-sink-{uuid.uuid4().hex[:6]}", stop_when_idle_s=3.0)
    return {"settings": settings, "records": records, "report": report, "es": es_client(settings.elasticsearch)}


def test_every_record_is_indexed_once_under_its_own_id(indexed):
    es, settings, records = indexed["es"], indexed["settings"], indexed["records"]
    for spec, id_field in ((SPANS, "span_id"), (PATHS, "path_id"), (RED_METRICS, "metric_id"), (NETWORK_METRICS, "metric_id"),
                           (ALERTS, "alert_id")):
        assert records[spec], spec.name
        assert sorted(_ids(es, settings, spec, id_field)) == sorted(r[id_field] for r in records[spec]), spec.name
    assert indexed["report"].dead_lettered == {}


def test_fields_have_their_types_and_answer_range_term_and_ecs_queries(indexed):
    es, settings, spans = indexed["es"], indexed["settings"], indexed["records"][SPANS]
    pattern = index_name(settings.elasticsearch, SPANS)
    [mapping] = es.indices.get_mapping(index=pattern).body.values()
    props = mapping["mappings"]["properties"]
    assert (props["client_ip"]["type"], props["duration_ns"]["type"], props["start_time"]["type"], props["span_id"]["type"]) == \
        ("ip", "long", "date_nanos", "keyword")
    assert props["source"]["properties"]["ip"] == {"type": "alias", "path": "client_ip"}
    slow = sorted(s["duration_ns"] for s in spans)[len(spans) // 2]
    expected = sum(1 for s in spans if s["duration_ns"] >= slow)
    assert es.count(index=pattern, query={"range": {"duration_ns": {"gte": slow}}})["count"] == expected
    assert es.count(index=pattern, query={"range": {"event.duration": {"gte": slow}}})["count"] == expected  # the ECS alias
    ip = spans[0]["server_ip"]
    expected_ip = sum(1 for s in spans if s["server_ip"] == ip)
    assert es.count(index=pattern, query={"term": {"destination.ip": ip}})["count"] == expected_ip
    assert es.count(index=pattern, query={"term": {"server_ip": "10.0.0.0/8"}})["count"] == len(spans)  # a CIDR on an ip field
    hit = es.search(index=pattern, size=1, query={"term": {"span.id": spans[0]["span_id"]}})["hits"]["hits"][0]["_source"]
    assert hit["start_time"].endswith("Z") and hit["@timestamp"] == hit["start_time"]  # nanosecond ISO times
    alerts = index_name(settings.elasticsearch, ALERTS)
    assert es.count(index=alerts, query={"range": {"measurements.duration_ms": {"gt": 3000}}})["count"] == 1
    assert es.count(index=alerts, query={"range": {"measurements.tpp-pay-1.dns_queries_per_s": {"gt": 40}}})["count"] == 1
    day = time.strftime("%Y.%m.%d", time.gmtime(spans[0]["start_time"] // S))
    assert f"{settings.elasticsearch.index_prefix}-spans-{day}" in es.indices.get(index=pattern)


def test_a_record_the_mapping_refuses_is_dead_lettered_with_the_error_and_the_rest_indexed(own_topics, registry):
    settings = own_topics
    records = _outputs(20, time.time_ns() - 300 * S)
    spans = records[SPANS]
    bad = dict(spans[0], span_id=uuid.uuid4().hex, client_ip="not-an-address")  # a string to Avro, not an ip to Elasticsearch
    _produce(settings, registry, {SPANS: [bad, *spans[1:]]})
    report = run_sink(settings, topics=[SPANS.name], group_id=f"it-sink-dlq-{uuid.uuid4().hex[:6]}", stop_when_idle_s=3.0)
    assert report.dead_lettered["REJECTED_BY_SINK"] >= 1
    es = es_client(settings.elasticsearch)
    assert bad["span_id"] not in _ids(es, settings, SPANS, "span_id")
    assert set(s["span_id"] for s in spans[1:]) <= set(_ids(es, settings, SPANS, "span_id"))
    decode = AvroDeserializer(registry)
    letters = [decode(m.value()) for m in read_until_idle(settings, DEAD_LETTER.full_name(settings.topics.prefix), idle_s=2)]
    mine = [d for d in letters if d["reason"] == "REJECTED_BY_SINK" and bad["span_id"].encode() in d["value"]]
    assert len(mine) == 1 and "failed to parse field [client_ip] of type [ip]" in mine[0]["detail"]


# the sink as a process ----------------------------------------------------------------------------------
def _fresh(settings, admin, registry, name):
    import dataclasses

    from schemas.topics import apply_catalog

    mine = dataclasses.replace(settings, topics=dataclasses.replace(settings.topics, prefix=f"{settings.topics.prefix}{name}."),
                               elasticsearch=dataclasses.replace(settings.elasticsearch, index_prefix=f"{settings.elasticsearch.index_prefix}-{name}"))
    apply_catalog(admin, registry, mine.topics.prefix, mine.topics.replication_factor)
    return mine


def _sink(settings, group, idle_s=8.0, stderr=subprocess.PIPE):
    env = dict(os.environ, TRACETAP_TOPICS__PREFIX=settings.topics.prefix,
               TRACETAP_ELASTICSEARCH__INDEX_PREFIX=settings.elasticsearch.index_prefix, TRACETAP_ELASTICSEARCH__BULK_ACTIONS="200")
    return subprocess.Popen([sys.executable, "-m", "cli.main", "sink", "elasticsearch", "--topic", "spans", "--group", group,
                             "--exit-when-idle", str(idle_s)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)


def _spans(n, start_ns):
    spans = []
    while len(spans) < n:
        spans += _outputs(min(2 * (n - len(spans)) + 40, 20_000), start_ns + len(spans) * S // 100)[SPANS]
    return spans[:n]


def _wait_for_count(es, settings, at_least, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            es.indices.refresh(index=index_name(settings.elasticsearch, SPANS))
            if es.count(index=index_name(settings.elasticsearch, SPANS))["count"] >= at_least:
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise AssertionError(f"fewer than {at_least} documents after {timeout_s} s")


def test_elasticsearch_stopped_and_started_under_load_indexes_every_record_exactly_once(settings, admin, registry, stack):
    mine = _fresh(settings, admin, registry, "es-outage")
    first, second = _spans(3000, time.time_ns() - 900 * S), _spans(3000, time.time_ns() - 300 * S)
    _produce(mine, registry, {SPANS: first})
    es_component = next(c for c in stack.components if c.name == "elasticsearch")
    es = es_client(mine.elasticsearch)
    sink = _sink(mine, f"it-outage-{uuid.uuid4().hex[:6]}", idle_s=20.0)
    try:
        _wait_for_count(es, mine, 500)
        processes.stop(processes.read_pid(es_component.pid_file), timeout_s=60)  # Elasticsearch goes away mid-stream
        _produce(mine, registry, {SPANS: second})  # and records keep coming
        time.sleep(5)
        assert sink.poll() is None  # the sink waits, it does not exit or crash
        stack.up()
        out, err = sink.communicate(timeout=300)
    finally:
        if sink.poll() is None:
            sink.kill()
        stack.up()
    assert sink.returncode == 0, err[-2000:]
    assert "elasticsearch unavailable" in err and "retries:" in out
    ids = _ids(es, mine, SPANS, "span_id")
    assert len(ids) == len(set(ids)) == len(first) + len(second)
    assert set(ids) == {s["span_id"] for s in first + second}


def test_a_sink_killed_mid_batch_and_restarted_indexes_every_record_exactly_once(settings, admin, registry):
    mine = _fresh(settings, admin, registry, "sink-kill")
    spans = _spans(6000, time.time_ns() - 600 * S)
    _produce(mine, registry, {SPANS: spans})
    es = es_client(mine.elasticsearch)
    group = f"it-kill-{uuid.uuid4().hex[:6]}"
    sink = _sink(mine, group)
    _wait_for_count(es, mine, 300)
    sink.send_signal(signal.SIGKILL)  # between or inside bulk requests, before or after a commit
    sink.wait()
    es.indices.refresh(index=index_name(mine.elasticsearch, SPANS))
    assert es.count(index=index_name(mine.elasticsearch, SPANS))["count"] < len(spans)  # it was killed mid-stream
    again = _sink(mine, group, idle_s=4.0)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    ids = _ids(es, mine, SPANS, "span_id")
    assert len(ids) == len(set(ids)) == len(spans) and set(ids) == {s["span_id"] for s in spans}


def test_two_sinks_in_one_group_share_the_partitions_and_index_everything_once(settings, admin, registry, tmp_path):
    mine = _fresh(settings, admin, registry, "sink-group")
    group = f"it-group-{uuid.uuid4().hex[:6]}"
    logs = [tmp_path / f"sink-{i}.log" for i in range(2)]
    sinks = [_sink(mine, group, idle_s=10.0, stderr=open(log, "w")) for log in logs]
    try:
        deadline = time.monotonic() + 90
        while not all("partitions assigned count=3" in log.read_text() for log in logs):  # six partitions, three each
            assert time.monotonic() < deadline and all(s.poll() is None for s in sinks), [log.read_text()[-800:] for log in logs]
            time.sleep(0.3)
        spans = _spans(4000, time.time_ns() - 600 * S)
        _produce(mine, registry, {SPANS: spans})
        outs = [s.communicate(timeout=300)[0] for s in sinks]
    finally:
        for s in sinks:
            if s.poll() is None:
                s.kill()
    assert all(s.returncode == 0 for s in sinks), [log.read_text()[-1500:] for log in logs]
    indexed = [int(out.split()[1]) for out in outs]  # "indexed N documents ..."
    assert all(n > 0 for n in indexed) and sum(indexed) == len(spans), indexed  # shared, and nothing twice
    ids = _ids(es_client(mine.elasticsearch), mine, SPANS, "span_id")
    assert len(ids) == len(set(ids)) == len(spans)


def test_a_daily_index_made_under_an_older_schema_takes_the_fields_a_newer_one_added(settings):
    """A schema gains an optional field (as PathRecord's service_ip): today's index, made from the older mapping
    (strict), takes records with it once the sink installs its templates, as tomorrow's will."""
    import dataclasses

    from sinks.elasticsearch import INDEXED_TYPES, daily_index, install_templates
    from sinks.mappings import index_mapping

    es_settings = dataclasses.replace(settings.elasticsearch, index_prefix=f"{settings.elasticsearch.index_prefix}-evolve")
    paths = next(t for t in INDEXED_TYPES if t.topic is PATHS)
    older = index_mapping(PATHS.name, PATHS.schema())
    for name in ("service_ip", "service_port"):
        del older["properties"][name]
    es = es_client(es_settings)
    today = daily_index(es_settings, PATHS, time.time_ns())
    es.indices.create(index=today, mappings=older)
    with pytest.raises(Exception, match="strict_dynamic_mapping_exception"):
        es.index(index=today, id="before", document={"path_id": "before", "service_ip": "10.96.0.20"})
    install_templates(es, es_settings, (paths,))
    es.index(index=today, id="after", document={"path_id": "after", "service_ip": "10.96.0.20", "service_port": 80}, refresh=True)
    hits = es.search(index=today, query={"term": {"service_ip": "10.96.0.0/16"}})["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["after"]
    es.indices.delete(index=today)
    es.indices.delete_index_template(name=f"{es_settings.index_prefix}-paths")


def _chain_spans(start_ns):
    """A request through web -> gateway -> oms-app -> redis, its points as the flow stage makes them (no trace id,
    no parent), linked by the core's keyed stages: one trace id per hop, the hops joined only by parent links."""
    from tracetap.model import Span, TapSide
    from tracetap.pipeline import KeyedPipeline

    hops = [("web", "gateway", 8080), ("gateway", "oms-app", 8080), ("oms-app", "redis", 6379)]
    points = [Span("HTTP", TapSide.SERVER_PROCESS, "node", start_ns, start_ns + 30_000_000, "tcp|10.77.0.1|50000|10.77.0.10|8080", "TCP",
                   "10.77.0.1", 50000, "10.77.0.10", 8080, request_type="GET", request_resource="/orders/1", response_code=200,
                   server_workload="web", req_tcp_seq=1000, syscall_trace_id_request=10, pid=10, identity="web-in")]
    for i, (client, callee, port) in enumerate(hops):
        served = points[-1]
        protocol = "REDIS" if callee == "redis" else "HTTP"
        address = (f"10.77.0.{10 + i}", 41000 + i, f"10.77.0.{11 + i}", port)
        common = dict(request_type="GET", request_resource="/orders/1", client_workload=client, server_workload=callee,
                      req_tcp_seq=5000 + i)
        points.append(Span(protocol, TapSide.CLIENT_PROCESS, "node", served.start_ns + 1_000_000, served.end_ns - 1_000_000,
                           "tcp|%s|%d|%s|%d" % address, "TCP", *address, syscall_trace_id_request=10 + i, pid=10 + i,
                           identity=f"{client}-out", **common))
        call = points[-1]
        points.append(Span(protocol, TapSide.SERVER_PROCESS, "node", call.start_ns + 100_000, call.end_ns - 100_000,
                           "tcp|%s|%d|%s|%d" % address, "TCP", *address, syscall_trace_id_request=11 + i, pid=11 + i,
                           identity=f"{callee}-in", **common))
    keyed = KeyedPipeline()
    for span in points:
        assert keyed.span(span)
    spans = {s["span_id"]: s for s in keyed.advance(final=True).spans}
    unrelated = Span("HTTP", TapSide.SERVER_PROCESS, "node", start_ns, start_ns + 1, "tcp|10.77.0.9|1|10.77.0.10|8080", "TCP",
                     "10.77.0.9", 1, "10.77.0.10", 8080, server_workload="web", identity="other", trace_id="t-other")
    return [spans[p.span_id] for p in points], unrelated.to_record()


def test_tracetap_trace_prints_every_hop_of_a_chain_linked_only_by_parents(own_topics, registry, tmp_path):
    settings = own_topics
    chain, unrelated = _chain_spans(time.time_ns() - 300 * S)
    _produce(settings, registry, {SPANS: [*chain, unrelated]})
    run_sink(settings, group_id=f"it-sink-{uuid.uuid4().hex[:6]}", stop_when_idle_s=3.0)
    env = dict(os.environ, TRACETAP_ELASTICSEARCH__INDEX_PREFIX=settings.elasticsearch.index_prefix)
    html = tmp_path / "trace.html"
    for call, served in zip(chain[1::2], chain[2::2]):  # each hop's client and server spans share its trace id
        assert call["trace_id"] == served["trace_id"] and served["parent_span_id"] == call["span_id"]
        assert call["parent_span_id"] in {s["span_id"] for s in chain}  # the call made while serving: the only tie across hops
    assert len({s["trace_id"] for s in chain}) == 4  # web's own request (its caller not traced), then three hops
    for ident in (chain[-1]["span_id"], chain[2]["span_id"], chain[0]["trace_id"]):  # the deepest span, one in the middle, a trace id
        done = subprocess.run([sys.executable, "-m", "cli.main", "trace", ident, "--html", str(html)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert ": 7 spans" in lines[0] and "services gateway, oms-app, redis, web" in lines[0]
        waterfall = lines[1:8]
        assert [line.split(" ms  ")[1].split()[0] for line in waterfall] == ["server-process", "client-process"] * 3 + ["server-process"]
        assert [len(line.split(" ms  ")[1]) - len(line.split(" ms  ")[1].lstrip()) for line in waterfall] == [0, 2, 4, 6, 8, 10, 12]
        assert "oms-app -> redis  REDIS GET /orders/1" in waterfall[-1]
        assert unrelated["span_id"] not in done.stdout and "<table class='waterfall'>" in html.read_text()
    missing = subprocess.run([sys.executable, "-m", "cli.main", "trace", "no-such-id"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 1 and "no span has the span id or trace id no-such-id" in missing.stderr
