"""What every node agent shares: the Kafka path (registry-checked producer behind an Emitter) and
the pipeline's own ports, which no agent may capture (no feedback loop).
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from producers.emitter import Emitter
from schemas.catalog import AGENT_STATS, TopicSpec
from schemas.preflight import check_kafka
from schemas.producer import AvroProducer
from schemas.registry import SchemaRegistry
from tracetap.config import Settings


def agent_host(settings: Settings) -> str:
    return settings.agent.host or socket.gethostname()


def open_emitter(settings: Settings, agent: str, specs: tuple[TopicSpec, ...]) -> Emitter:
    """An Emitter for one agent; Kafka, the topics and the registry are checked now, not on the first event (a
    broker that goes away later is ridden out with the buffer)."""
    check_kafka(settings.kafka, [spec.full_name(settings.topics.prefix) for spec in (*specs, AGENT_STATS)])
    producer = AvroProducer(settings, SchemaRegistry(settings.registry))
    for spec in (*specs, AGENT_STATS):
        producer.serializer(spec)
    return Emitter(producer, agent=agent, host=agent_host(settings), capacity=settings.agent.buffer_records,
                   stats_interval_s=settings.agent.stats_interval_s)


def excluded_ports(settings: Settings) -> set[int]:
    """The pipeline's own servers' ports, so an agent never captures its own traffic (no feedback loop)."""
    ports = set(settings.agent.exclude_ports)
    if settings.agent.exclude_pipeline_ports:
        for server in settings.kafka.bootstrap_servers.split(","):
            ports.add(int(server.rsplit(":", 1)[1]))
        for url in [settings.registry.url, *settings.elasticsearch.hosts]:
            parts = urlsplit(url)
            ports.add(parts.port or (443 if parts.scheme == "https" else 80))
    return ports
