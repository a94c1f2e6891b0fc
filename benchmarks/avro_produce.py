"""Benchmark: Avro-encode + produce throughput vs raw confluent-kafka produce of pre-encoded bytes.

Not a test (never run in CI, not collected by pytest). Needs the local stack (`tracetap stack up`,
the script creates its own `tracetap-bench.raw.socket-data` topic, so no benchmark record lands on a
real topic).

Baseline and subject run in the same process, in ALTERNATING rounds (baseline, subject, baseline, ...),
and the script prints medians and the subject/baseline ratio; on a small shared machine the absolute
numbers are noisy, the ratio is what to compare between commits.

    .venv/bin/python benchmarks/avro_produce.py [--records 200000] [--rounds 5] [--profile]

  baseline  raw confluent_kafka.Producer (same producer_config) producing pre-encoded bytes, then flush
  subject   AvroProducer.produce(SOCKET_DATA, key, record): encode + produce per record, then flush
  diag      AvroProducer.produce_encoded (wrapper without the encode) and encode-only (no Kafka)
"""

from __future__ import annotations

import argparse
import dataclasses
import cProfile
import io
import os
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import confluent_kafka  # noqa: E402
import fastavro  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from schemas.catalog import SOCKET_DATA  # noqa: E402
from schemas.kafka import producer_config  # noqa: E402
from schemas.producer import AvroProducer  # noqa: E402
from schemas.registry import SchemaRegistry  # noqa: E402
from tracetap.config import Settings  # noqa: E402
from cli.main import read_settings  # noqa: E402
from schemas.kafka import client_config  # noqa: E402
from schemas.topics import apply_catalog  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from tracetap.flow import Endpoint, flow_id  # noqa: E402

PAYLOAD_PREFIX = 256
BENCH_PREFIX = "tracetap-bench."
WARMUP_RECORDS = 5_000


def http_request(rng: random.Random, order_id: int) -> bytes:
    """A real-looking HTTP/1.1 GET with headers, cut to the agent's payload prefix."""
    trace_id, span_id = rng.getrandbits(128), rng.getrandbits(64)
    text = (
        f"GET /api/orders/{order_id}?include=items,customer HTTP/1.1\r\n"
        "Host: oms-app.default.svc.cluster.local:8080\r\n"
        "User-Agent: Go-http-client/1.1\r\n"
        "Accept: application/json\r\n"
        "Accept-Encoding: gzip\r\n"
        f"X-Request-Id: {rng.getrandbits(128):032x}\r\n"
        f"traceparent: 00-{trace_id:032x}-{span_id:016x}-01\r\n"
        "Authorization: Bearer ****\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode()
    assert len(text) > PAYLOAD_PREFIX
    return text


def build_pool(size: int, seed: int = 42) -> tuple[list[str], list[dict[str, Any]]]:
    """`size` distinct SocketDataEvents (server side reading a request) and their flow-id keys."""
    rng = random.Random(seed)
    base_ns = time.time_ns()
    keys, records = [], []
    for i in range(size):
        client_ip, client_port = f"10.42.{rng.randrange(4)}.{rng.randrange(2, 250)}", rng.randrange(32768, 61000)
        server_ip, server_port = "10.42.0.13", 8080
        request = http_request(rng, rng.randrange(10**6))
        pid = 1000 + rng.randrange(200)
        start = base_ns + i * 137_000 + rng.randrange(1000)
        keys.append(flow_id("TCP", Endpoint(client_ip, client_port), Endpoint(server_ip, server_port)))
        records.append({
            "host": "node-1", "start_time": start, "end_time": start + rng.randrange(2_000, 60_000),
            "pid": pid, "tid": pid + rng.randrange(16), "comm": "oms-app", "fd": rng.randrange(8, 512),
            "socket_id": 2_000_000 + rng.randrange(10**6), "netns_inode": 4026532000 + rng.randrange(64),
            "direction": "INGRESS", "syscall": "READ", "bytes": len(request), "l4_protocol": "TCP",
            "local_ip": server_ip, "local_port": server_port, "remote_ip": client_ip, "remote_port": client_port,
            "role": "SERVER", "payload": request[:PAYLOAD_PREFIX], "tcp_seq": rng.getrandbits(32),
            "syscall_trace_id": rng.getrandbits(62), "cgroup_id": 10_000 + rng.randrange(500),
        })
    return keys, records


def bench_settings(config: str | None) -> Settings:
    """The user's settings with a topic prefix of the benchmark's own, whose topic is created here."""
    settings = read_settings(config, dict(os.environ))
    settings = dataclasses.replace(settings, topics=dataclasses.replace(settings.topics, prefix=BENCH_PREFIX))
    apply_catalog(AdminClient(client_config(settings.kafka)), SchemaRegistry(settings.registry), BENCH_PREFIX,
                  settings.topics.replication_factor, specs=[SOCKET_DATA])
    return settings


class Bench:
    def __init__(self, settings: Settings, pool_size: int) -> None:
        self.registry = SchemaRegistry(settings.registry)
        self.avro = AvroProducer(settings, self.registry)
        self.raw = Producer(producer_config(settings.kafka))
        self.topic = SOCKET_DATA.full_name(settings.topics.prefix)
        self.serializer = self.avro.serializer(SOCKET_DATA)
        self.keys, self.records = build_pool(pool_size)
        self.encoded = [self.serializer(r) for r in self.records]

    def baseline(self, n: int) -> None:
        produce, poll, topic, keys, values, p = self.raw.produce, self.raw.poll, self.topic, self.keys, self.encoded, len(self.encoded)
        for i in range(n):
            j = i % p
            while True:
                try:
                    produce(topic, value=values[j], key=keys[j])
                    break
                except BufferError:
                    poll(0.1)
            poll(0)
        remaining = self.raw.flush(60)
        if remaining:
            raise RuntimeError(f"baseline: {remaining} records unacknowledged")

    def subject(self, n: int) -> None:
        produce, keys, records, p = self.avro.produce, self.keys, self.records, len(self.records)
        for i in range(n):
            j = i % p
            produce(SOCKET_DATA, keys[j], records[j])
        self.avro.flush(60)

    def wrapper_only(self, n: int) -> None:
        produce, keys, values, p = self.avro.produce_encoded, self.keys, self.encoded, len(self.encoded)
        for i in range(n):
            j = i % p
            produce(SOCKET_DATA, keys[j], values[j])
        self.avro.flush(60)

    def encode_only(self, n: int) -> None:
        serialize, records, p = self.serializer, self.records, len(self.records)
        for i in range(n):
            serialize(records[i % p])


def timed(fn: Callable[[int], None], n: int) -> float:
    started = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="records per round (default 200000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each case, alternating (default 5)")
    parser.add_argument("--pool", type=int, default=1_000, help="distinct pre-built records (default 1000)")
    parser.add_argument("--config", help="TOML settings file (default: $TRACETAP_CONFIG, else ./tracetap.toml if present)")
    parser.add_argument("--profile", action="store_true", help="afterwards, cProfile one subject round; top 15 by cumulative time")
    args = parser.parse_args()

    settings = bench_settings(args.config)
    bench = Bench(settings, args.pool)
    mean_size = statistics.fmean(len(v) for v in bench.encoded)
    fastavro_impl = "C" if fastavro.write.schemaless_writer.__module__ == "fastavro._write" else "pure Python"
    print(f"env: Python {platform.python_version()} | confluent-kafka {confluent_kafka.__version__} "
          f"(librdkafka {confluent_kafka.libversion()[0]}) | fastavro {fastavro.__version__} ({fastavro_impl}) | {os.cpu_count()} cores")
    print(f"run: topic={bench.topic} records/round={args.records} rounds={args.rounds} pool={args.pool} "
          f"encoded={mean_size:.0f} B/record (payload prefix {PAYLOAD_PREFIX} B)")

    cases: list[tuple[str, Callable[[int], None]]] = [
        ("baseline: raw Producer, pre-encoded", bench.baseline),
        ("subject: AvroProducer.produce", bench.subject),
        ("diag: AvroProducer.produce_encoded", bench.wrapper_only),
        ("diag: encode only (no Kafka)", bench.encode_only),
    ]
    for _, fn in cases:  # warm-up: metadata, idempotent producer id, connections
        fn(WARMUP_RECORDS)
    rates: dict[str, list[float]] = {name: [] for name, _ in cases}
    for r in range(args.rounds):
        for name, fn in cases:
            rates[name].append(timed(fn, args.records))
        print(f"  round {r + 1}/{args.rounds}: " + "  ".join(f"{rates[name][-1]:,.0f}" for name, _ in cases), flush=True)

    base = rates[cases[0][0]]
    print(f"\n{'case':38} {'median rec/s':>13} {'min':>10} {'max':>10} {'MB/s':>7} {'ratio':>6}")
    for name, _ in cases:
        med = statistics.median(rates[name])
        pair = statistics.median(s / b for s, b in zip(rates[name], base))  # per-round pairs, robust to drift
        print(f"{name:38} {med:13,.0f} {min(rates[name]):10,.0f} {max(rates[name]):10,.0f} "
              f"{med * mean_size / 1e6:7.1f} {pair:6.2f}")
    print("ratio = median over rounds of (case / baseline of the same round); >1 is faster than the baseline")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        bench.subject(args.records)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(15)
        print(f"\ncProfile of one subject round ({args.records} records), top 15 by cumulative time:")
        text = out.getvalue()
        print(text[text.index("   ncalls"):].rstrip())  # drop pstats' banner lines


if __name__ == "__main__":
    main()
