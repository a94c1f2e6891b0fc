"""The topic catalog: tracetap's public API on Kafka, declared once.

Code refers to topics through these constants (`catalog.SPANS`), never by string literals.
Raw, span and path topics share the partition count and the flow-id key, so the four tap
points of one connection meet in the same partition number (co-partitioned).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str  # without the configured prefix
    description: str
    value_schema: str  # file in schemas/avro/
    key: str  # what the UTF-8 string key holds
    partitions: int
    cleanup_policy: str = "delete"
    retention_ms: int | None = None  # None: the broker's default (or unlimited when compacted)
    producers: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    # The value field (ns) whose time becomes the Kafka record timestamp (ms), so that Flink, Kafka Streams and
    # Kafka's own time-based retention see event time; None: the producer's wall clock.
    time_field: str | None = None

    def full_name(self, prefix: str) -> str:
        return prefix + self.name

    def value_subject(self, prefix: str) -> str:
        """TopicNameStrategy: `<topic>-value`."""
        return f"{self.full_name(prefix)}-value"

    def kafka_config(self) -> dict[str, str]:
        config = {"cleanup.policy": self.cleanup_policy}
        if self.retention_ms is not None:
            config["retention.ms"] = str(self.retention_ms)
        return config

    def schema(self) -> dict[str, Any]:
        return load_schema(self.value_schema)


_STREAMS = "tracetap streams faust|flink"
_SINK = "tracetap sink elasticsearch"

SOCKET_DATA = TopicSpec(
    name="raw.socket-data",
    description="Socket data syscalls with payload prefixes, from every process on a node.",
    value_schema="socket_data_event.avsc", key="flow id", partitions=6, retention_ms=DAY_MS,
    producers=("tracetap agent ebpf",), consumers=(_STREAMS,), time_field="end_time")
SOCKET_LIFECYCLE = TopicSpec(
    name="raw.socket-lifecycle",
    description="Connect, accept, close, TCP state changes, retransmits, resets and RTT samples.",
    value_schema="socket_lifecycle_event.avsc", key="flow id", partitions=6, retention_ms=DAY_MS,
    producers=("tracetap agent ebpf",), consumers=(_STREAMS,), time_field="time")
PACKETS = TopicSpec(
    name="raw.packets",
    description="One decoded summary per packet at NIC tap points; also for security teams.",
    value_schema="packet_summary.avsc", key="flow id", partitions=6, retention_ms=DAY_MS,
    producers=("tracetap agent packets",), consumers=(_STREAMS, "security teams"), time_field="time")
NODE_SPANS = TopicSpec(
    name="raw.spans",
    description="Spans the agents assembled on the node (in-collector, their default): one record per request at its tap point, not yet linked.",
    value_schema="l7_span.avsc", key="flow id", partitions=6, retention_ms=DAY_MS,
    producers=("tracetap agent ebpf", "tracetap agent packets"), consumers=(_STREAMS,), time_field="end_time")
RESOURCES = TopicSpec(
    name="resources",
    description="What each pid, network namespace and IP belongs to (workload tags). Compacted; a tombstone removes a resource.",
    value_schema="resource_tag.avsc", key="resource id", partitions=3, cleanup_policy="compact",
    producers=("tracetap agent ebpf",), consumers=(_STREAMS,))
SPANS = TopicSpec(
    name="spans",
    description="L7 request/response spans at the four tap points, linked into traces.",
    value_schema="l7_span.avsc", key="flow id", partitions=6, retention_ms=7 * DAY_MS,
    producers=(_STREAMS,), consumers=(_SINK, "big-data teams"), time_field="end_time")
PATHS = TopicSpec(
    name="paths",
    description="Four-point full-path records with per-segment latencies.",
    value_schema="path_record.avsc", key="flow id", partitions=6, retention_ms=7 * DAY_MS,
    producers=(_STREAMS,), consumers=(_SINK,))
RED_METRICS = TopicSpec(
    name="metrics.red",
    description="RED metrics (rate, errors, latency sketch) per endpoint and window.",
    value_schema="red_metric.avsc", key="metric id", partitions=3, retention_ms=30 * DAY_MS,
    producers=(_STREAMS,), consumers=(_SINK, "alerting"))
NETWORK_METRICS = TopicSpec(
    name="metrics.network",
    description="Network metrics (bytes, retransmits, RTT, failed connects, resets) per flow pair and window.",
    value_schema="network_metric.avsc", key="metric id", partitions=3, retention_ms=30 * DAY_MS,
    producers=(_STREAMS,), consumers=(_SINK,))
ALERTS = TopicSpec(
    name="alerts",
    description="Findings with their evidence: slow requests, errors with failed dependencies, DNS storms, regressions.",
    value_schema="alert.avsc", key="alert id", partitions=1, retention_ms=30 * DAY_MS,
    producers=(_STREAMS,), consumers=(_SINK, "on-call tooling"))
AGENT_STATS = TopicSpec(
    name="agent-stats",
    description="Periodic agent counters: captured, lost, overflowed and undelivered events.",
    value_schema="agent_stats.avsc", key="agent|host", partitions=1, retention_ms=7 * DAY_MS,
    producers=("tracetap agent ebpf", "tracetap agent packets"), consumers=("operators",))
PROFILES = TopicSpec(
    name="profiles",
    description="On-CPU samples and off-CPU time per process and window, as folded stacks by thread (flame graphs).",
    value_schema="profile.avsc", key="host|pid", partitions=3, retention_ms=7 * DAY_MS,
    producers=("tracetap agent ebpf",), consumers=(_SINK, "tracetap profile"), time_field="window_end")
DEAD_LETTER = TopicSpec(
    name="deadletter",
    description="Records a component could not process, kept whole with the reason.",
    value_schema="dead_letter.avsc", key="source topic|partition|offset", partitions=1, retention_ms=14 * DAY_MS,
    producers=("every consuming component",), consumers=("operators",))

CATALOG: tuple[TopicSpec, ...] = (
    SOCKET_DATA, SOCKET_LIFECYCLE, PACKETS, NODE_SPANS, RESOURCES, SPANS, PATHS,
    RED_METRICS, NETWORK_METRICS, ALERTS, PROFILES, AGENT_STATS, DEAD_LETTER,
)

# What the stream jobs read and write (checked at their start): the topics they produce or consume, and dead letters.
STREAM_TOPICS: tuple[TopicSpec, ...] = (*(s for s in CATALOG if _STREAMS in s.producers + s.consumers), DEAD_LETTER)


@cache
def load_schema(file_name: str) -> dict[str, Any]:
    """The parsed JSON of schemas/avro/<file_name>."""
    text = resources.files("schemas").joinpath("avro", file_name).read_text(encoding="utf-8")
    return json.loads(text)


def markdown_table(prefix: str) -> str:
    """The catalog as the Markdown table the README shows."""
    rows = [
        "| topic | key | value schema | partitions | cleanup / retention | produced by | consumed by | what it holds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for spec in CATALOG:
        schema = spec.schema()
        kept = spec.cleanup_policy if spec.retention_ms is None else f"{spec.cleanup_policy}, {spec.retention_ms // DAY_MS} d"
        rows.append(
            f"| `{spec.full_name(prefix)}` | {spec.key} | `{schema['namespace']}.{schema['name']}` "
            f"([{spec.value_schema}](schemas/avro/{spec.value_schema})) | {spec.partitions} | {kept} | "
            f"{', '.join(spec.producers)} | {', '.join(spec.consumers)} | {spec.description} |"
        )
    return "\n".join(rows)
