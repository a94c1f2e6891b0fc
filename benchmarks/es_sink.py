"""Benchmark: documents/s `tracetap sink elasticsearch` indexes from Kafka, against a baseline in the same run of
`elasticsearch.helpers.parallel_bulk` indexing the same pre-built documents straight into Elasticsearch.

Input: N span records from the core's stages (benchmarks.core_pipeline.make_events through FlowStage and
KeyedPipeline), produced to a bench topic. Baseline: the documents the sink would write (to_document, same daily
indices, same template), parallel_bulk with the sink's bulk size and concurrency. Subject: run_sink from the
earliest offset; its rate counts from its first indexed document to its last (the group join before is not
indexing). Alternating rounds, fresh indices each time; medians and the ratio (goal >= 0.8).

    .venv/bin/python benchmarks/es_sink.py --spans 40000 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka.admin import AdminClient  # noqa: E402
from elasticsearch.helpers import parallel_bulk  # noqa: E402

from benchmarks.core_pipeline import timed_events  # noqa: E402
from cli.main import read_settings  # noqa: E402
from schemas.catalog import SPANS  # noqa: E402
from schemas.kafka import client_config  # noqa: E402
from schemas.producer import AvroProducer  # noqa: E402
from schemas.registry import SchemaRegistry  # noqa: E402
from schemas.topics import apply_catalog  # noqa: E402
from sinks.elasticsearch import INDEXED_TYPES, daily_index, es_client, index_name, install_templates, run_sink, to_document  # noqa: E402
from tracetap.pipeline import KeyedPipeline  # noqa: E402
from tracetap.stages import FlowStage  # noqa: E402


def spans(n: int) -> list[dict]:
    flows, trace = {}, KeyedPipeline()
    for key, r in timed_events(2 * n + 20, time.time_ns() - 3600 * 1_000_000_000, spacing=10, host="bench"):
        for span in flows.setdefault(key, FlowStage()).socket_data(r):
            trace.span(span)
    return trace.advance(final=True).spans[:n]


def wait_count(es, pattern: str, n: int, started: float, first_seen: list[float]) -> float:
    while True:
        try:
            es.indices.refresh(index=pattern)
            count = es.count(index=pattern)["count"]
        except Exception:
            count = 0
        if count and not first_seen:
            first_seen.append(time.monotonic())
        if count >= n:
            return time.monotonic()
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spans", type=int, default=40_000, help="span records (default 40000)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--sink-processes", type=int, default=1, help="sink processes in one consumer group (default 1)")
    args = ap.parse_args()
    base = read_settings(None, dict(os.environ))
    run = uuid.uuid4().hex[:6]
    settings = dataclasses.replace(base, topics=dataclasses.replace(base.topics, prefix=f"tracetap-bench.{run}."))
    admin, registry = AdminClient(client_config(base.kafka)), SchemaRegistry(base.registry)
    apply_catalog(admin, registry, settings.topics.prefix, 1)
    records = spans(args.spans)
    producer = AvroProducer(settings, registry)
    for r in records:
        producer.produce(SPANS, r["flow_id"], r)
    producer.flush(120)
    indexed = next(t for t in INDEXED_TYPES if t.topic is SPANS)
    es_settings = base.elasticsearch
    print(f"Elasticsearch sink benchmark: {len(records):,} spans, bulk {es_settings.bulk_actions} documents x "
          f"{es_settings.bulk_concurrency} in flight, {args.sink_processes} sink process(es), {args.rounds} alternating rounds, load {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, list[float]] = {"parallel_bulk": [], "sink": []}
    es = es_client(es_settings)
    for i in range(args.rounds):
        for mode in ("parallel_bulk", "sink"):
            es_round = dataclasses.replace(es_settings, index_prefix=f"tracetap-bench-{run}-{i}-{mode.replace('_', '')}")
            pattern = index_name(es_round, SPANS)
            install_templates(es, es_round, (indexed,))
            if mode == "parallel_bulk":
                docs = [(daily_index(es_round, SPANS, r["start_time"]), r["span_id"], to_document(indexed, dict(r))) for r in records]
                started = time.monotonic()
                actions = ({"_index": index, "_id": doc_id, "_source": doc} for index, doc_id, doc in docs)
                for ok, item in parallel_bulk(es, actions, chunk_size=es_round.bulk_actions, thread_count=es_round.bulk_concurrency):
                    assert ok, item
                ended = wait_count(es, pattern, len(records), started, [])
            else:
                first: list[float] = []
                watcher_end: list[float] = []
                watcher = threading.Thread(target=lambda: watcher_end.append(wait_count(es, pattern, len(records), 0, first)))
                watcher.start()
                if args.sink_processes == 1:
                    round_settings = dataclasses.replace(settings, elasticsearch=es_round)
                    run_sink(round_settings, topics=[SPANS.name], group_id=f"bench-sink-{run}-{i}", stop_when_idle_s=2.0)
                else:  # sink processes in one consumer group, as `tracetap sink elasticsearch` scales out
                    env = dict(os.environ, TRACETAP_TOPICS__PREFIX=settings.topics.prefix, TRACETAP_ELASTICSEARCH__INDEX_PREFIX=es_round.index_prefix,
                               TRACETAP_LOG__LEVEL="WARNING")
                    command = [sys.executable, "-m", "cli.main", "sink", "elasticsearch", "--topic", "spans", "--group",
                               f"bench-sink-{run}-{i}", "--exit-when-idle", "3"]
                    sinks = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL) for _ in range(args.sink_processes)]
                    for sink in sinks:
                        sink.wait()
                watcher.join()
                started, ended = first[0], watcher_end[0]
            rate = len(records) / (ended - started)
            results[mode].append(rate)
            print(f"round {i + 1} {mode:>13}: {rate:,.0f} documents/s", flush=True)
            es.indices.delete(index=",".join(es.indices.get(index=pattern)))
            es.indices.delete_index_template(name=pattern.removesuffix("-*"))
    med = {m: statistics.median(v) for m, v in results.items()}
    ratio = med["sink"] / med["parallel_bulk"]
    print(f"median: parallel_bulk {med['parallel_bulk']:,.0f}/s, sink from Kafka {med['sink']:,.0f}/s, ratio {ratio:.2f} "
          f"(goal >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'})")
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topics.prefix)]
    for future in admin.delete_topics(topics).values():
        future.result()
    return 0


if __name__ == "__main__":
    sys.exit(main())
