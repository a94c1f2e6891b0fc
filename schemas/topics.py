"""Applies the topic catalog to a cluster and its registry, idempotently."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, NewTopic

from schemas.catalog import CATALOG, TopicSpec
from schemas.registry import BACKWARD, SchemaRegistry
from tracetap.errors import TracetapError

log = logging.getLogger("tracetap.topics")


class TopicError(TracetapError):
    """The cluster refused to create or change a topic."""


@dataclass(frozen=True, slots=True)
class TopicResult:
    topic: str
    action: str  # created | updated | unchanged
    schema_id: int


def apply_catalog(admin: AdminClient, registry: SchemaRegistry, prefix: str, replication_factor: int,
                  specs: Iterable[TopicSpec] = CATALOG, timeout_s: float = 30.0) -> list[TopicResult]:
    """Create missing topics, raise partition counts and configs to the catalog's, register value
    schemas under TopicNameStrategy subjects with BACKWARD compatibility."""
    specs = list(specs)
    existing = admin.list_topics(timeout=timeout_s).topics
    results = []
    missing = [s for s in specs if s.full_name(prefix) not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.full_name(prefix), num_partitions=s.partitions, replication_factor=replication_factor, config=s.kafka_config()) for s in missing],
            operation_timeout=timeout_s, request_timeout=timeout_s)
        _wait(futures, "create")
    for spec in specs:
        name = spec.full_name(prefix)
        action = "created" if spec in missing else _update(admin, spec, name, len(existing[name].partitions), timeout_s)
        subject = spec.value_subject(prefix)
        schema_id = registry.register(subject, spec.schema())
        registry.set_compatibility(subject, BACKWARD)
        log.debug("topic applied topic=%s action=%s subject=%s schema_id=%d", name, action, subject, schema_id)
        results.append(TopicResult(name, action, schema_id))
    return results


def _update(admin: AdminClient, spec: TopicSpec, name: str, partitions: int, timeout_s: float) -> str:
    changed = False
    if partitions < spec.partitions:
        _wait(admin.create_partitions([NewPartitions(name, spec.partitions)], request_timeout=timeout_s), "add partitions to")
        changed = True
    elif partitions > spec.partitions:
        log.warning("topic has more partitions than the catalog topic=%s partitions=%d catalog=%d (Kafka cannot shrink a topic; left as is)",
                    name, partitions, spec.partitions)
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    current = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result(timeout_s)
    wanted = spec.kafka_config()
    stale = {k: v for k, v in wanted.items() if current[k].value != v}
    if stale:
        resource = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in stale.items()])
        _wait(admin.incremental_alter_configs([resource], request_timeout=timeout_s), "configure")
        changed = True
    return "updated" if changed else "unchanged"


def _wait(futures: dict, verb: str) -> None:
    for name, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            raise TopicError(f"cannot {verb} topic {name}: {exc.args[0].str()}") from None
