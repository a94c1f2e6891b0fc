import dataclasses
import uuid

import pytest
from confluent_kafka.admin import AdminClient

from schemas.kafka import client_config
from schemas.registry import SchemaRegistry
from schemas.topics import apply_catalog


@pytest.fixture(scope="session")
def settings(base_settings, stack):
    """Settings whose topic prefix and index prefix are unique to this test session."""
    run = uuid.uuid4().hex[:8]
    return dataclasses.replace(
        base_settings,
        topics=dataclasses.replace(base_settings.topics, prefix=f"it-{run}."),
        elasticsearch=dataclasses.replace(base_settings.elasticsearch, index_prefix=f"it-{run}"),
    )


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
