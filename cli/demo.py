"""`tracetap demo` (foundation stage): stack up, topics applied, sample spans produced as Avro through
Kafka, indexed by the Elasticsearch sink, and the findings read back from Elasticsearch.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from schemas.catalog import SPANS
from schemas.producer import AvroProducer
from schemas.registry import SchemaRegistry
from sinks.elasticsearch import es_client, index_name, run_sink
from tracetap.config import Settings

Progress = Callable[[str], None]


def run_demo(settings: Settings, state_dir: Path, spans: int, start_stack: bool, progress: Progress) -> None:
    started = time.monotonic()
    if start_stack:
        from infra.stack import LocalStack

        print("1/5 local stack", flush=True)
        LocalStack(settings.stack, state_dir, progress=progress).up()
    else:
        print("1/5 using the configured servers (--no-stack)", flush=True)

    print("2/5 topics and schemas", flush=True)
    from confluent_kafka.admin import AdminClient

    from schemas.kafka import client_config
    from schemas.topics import apply_catalog

    registry = SchemaRegistry(settings.registry)
    results = apply_catalog(AdminClient(client_config(settings.kafka)), registry, settings.topics.prefix, settings.topics.replication_factor)
    actions = Counter(r.action for r in results)
    progress(f"{len(results)} topics ({', '.join(f'{n} {a}' for a, n in sorted(actions.items()))}), value schemas registered with BACKWARD compatibility")

    print(f"3/5 producing {spans} sample L7 spans as Avro to {SPANS.full_name(settings.topics.prefix)}", flush=True)
    from producers.sample import sample_spans

    producer = AvroProducer(settings, registry)
    t0 = time.monotonic()
    for span in sample_spans(spans, start_ns=time.time_ns() - 60_000_000_000):
        producer.produce(SPANS, span["flow_id"], span)
    # One record that is not Avro at all, to show the dead-letter path.
    producer.produce_encoded(SPANS, "demo|garbage", b"this is not avro")
    producer.flush()
    progress(f"{spans} spans + 1 garbage record acknowledged by Kafka in {time.monotonic() - t0:.2f} s")

    print("4/5 Elasticsearch sink (runs until the topic is drained)", flush=True)
    report = run_sink(settings, topics=[SPANS.name], group_id="tracetap-demo", stop_when_idle_s=3.0)
    progress(report.summary())

    print("5/5 findings, read back from Elasticsearch", flush=True)
    es = es_client(settings.elasticsearch)
    index = index_name(settings.elasticsearch, SPANS)
    es.indices.refresh(index=index)
    total = es.count(index=index)["count"]
    progress(f"{index} holds {total} documents (ids are deterministic: re-running the demo overwrites, never duplicates)")
    slow = es.search(index=index, size=3, sort=[{"duration_ns": "desc"}], query={"match_all": {}})["hits"]["hits"]
    progress("slowest spans:")
    for hit in slow:
        s = hit["_source"]
        progress(f"  {s['duration_ns'] / 1e9:6.2f} s  {s['client_workload']} -> {s['server_workload']}  {s['endpoint']}")
    errors = es.search(index=index, size=0, query={"exists": {"field": "error_class"}},
                       aggs={"by": {"terms": {"field": "server_workload", "size": 5},
                                    "aggs": {"msg": {"terms": {"field": "response_message", "size": 2}}}}})
    progress("errors by server workload:")
    for bucket in errors["aggregations"]["by"]["buckets"]:
        messages = ", ".join(f"{m['key']} x{m['doc_count']}" for m in bucket["msg"]["buckets"])
        progress(f"  {bucket['key']:<12} {bucket['doc_count']:>4}  ({messages})")
    dead = report.dead_lettered.total()
    progress(f"dead-lettered: {dead} record(s) on {settings.topics.prefix}deadletter, with the reason")
    print(f"demo done in {time.monotonic() - started:.1f} s. Elasticsearch: {settings.elasticsearch.hosts[0]}/{index}/_search")
