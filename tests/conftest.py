import dataclasses
import os
import uuid

import pytest
from confluent_kafka.admin import AdminClient

from schemas.kafka import client_config
from schemas.registry import SchemaRegistry
from schemas.topics import apply_catalog

from cli.main import read_settings, state_dir


@pytest.fixture(scope="session")
def base_settings():
    return read_settings(None, dict(os.environ))


@pytest.fixture(scope="session")
def stack(base_settings):
    """The real local stack (Kafka, Apicurio, Elasticsearch), started once if it is not running."""
    from infra.stack import LocalStack

    local = LocalStack(base_settings.stack, state_dir(base_settings, dict(os.environ)))
    local.up()
    return local


@pytest.fixture(scope="session")
def settings(base_settings, stack):
    """Settings whose topic prefix and index prefix are unique to this test session; what the
    session creates under them is removed at its end, so repeated runs do not pile up state."""
    run = uuid.uuid4().hex[:8]
    mine = dataclasses.replace(
        base_settings,
        topics=dataclasses.replace(base_settings.topics, prefix=f"it-{run}."),
        elasticsearch=dataclasses.replace(base_settings.elasticsearch, index_prefix=f"it-{run}"),
    )
    yield mine
    if not os.environ.get("TRACETAP_TEST_KEEP"):  # set it to look at a run's topics and indices afterwards
        _remove_session_state(mine)


def _remove_session_state(settings):
    from sinks.elasticsearch import es_client

    prefix = settings.topics.prefix
    admin = AdminClient(client_config(settings.kafka))
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if topics:
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            future.result()
    registry = SchemaRegistry(settings.registry)
    for subject in registry.subjects():
        if subject.startswith(prefix) or subject.startswith(("probe-", "restart-")):
            registry.delete_subject(subject)
    es = es_client(settings.elasticsearch)
    indices = list(es.indices.get(index=f"{settings.elasticsearch.index_prefix}*", expand_wildcards="all"))
    if indices:
        es.indices.delete(index=",".join(indices))
    found = es.options(ignore_status=404).indices.get_index_template(name=f"{settings.elasticsearch.index_prefix}*")
    templates = [t["name"] for t in found.get("index_templates", [])]
    for template in templates:
        es.indices.delete_index_template(name=template)


@pytest.fixture(scope="session")
def admin(settings):
    return AdminClient(client_config(settings.kafka))


@pytest.fixture(scope="session")
def registry(settings):
    return SchemaRegistry(settings.registry)


@pytest.fixture(scope="session")
def topics(settings, admin, registry):
    return apply_catalog(admin, registry, settings.topics.prefix, settings.topics.replication_factor)


@pytest.fixture(scope="module")
def own_topics(settings, admin, registry, request):
    """Settings with topics and indices of this test module's own, so counts are exact."""
    suffix = request.module.__name__.rsplit(".", 1)[-1].replace("test_", "").replace("_", "-")
    mine = dataclasses.replace(
        settings,
        topics=dataclasses.replace(settings.topics, prefix=f"{settings.topics.prefix}{suffix}."),
        elasticsearch=dataclasses.replace(settings.elasticsearch, index_prefix=f"{settings.elasticsearch.index_prefix}-{suffix}"),
    )
    apply_catalog(admin, registry, mine.topics.prefix, mine.topics.replication_factor)
    return mine


@pytest.fixture(scope="session")
def secured_kafka(stack, tmp_path_factory):
    """A second broker, SASL_SSL (SCRAM-SHA-512) and SSL with client certificates, from the stack's Kafka
    (tests/secured_kafka.py); one per session, stopped at its end."""
    from tests.secured_kafka import start_secured_broker

    kafka = stack.components[0]
    broker = start_secured_broker(kafka.dist, kafka.java, tmp_path_factory.mktemp("secured-kafka"))
    yield broker
    broker.stop()
