from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from schemas.catalog import CATALOG, SPANS
from schemas.topics import apply_catalog


def _configs(admin, topic):
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return admin.describe_configs([resource])[resource].result(30)


def test_apply_creates_every_topic_with_the_catalog_layout(settings, admin, topics):
    assert {r.action for r in topics} == {"created"}
    metadata = admin.list_topics(timeout=10).topics
    for spec in CATALOG:
        name = spec.full_name(settings.topics.prefix)
        assert len(metadata[name].partitions) == spec.partitions
        config = _configs(admin, name)
        assert config["cleanup.policy"].value == spec.cleanup_policy
        if spec.retention_ms is not None:
            assert config["retention.ms"].value == str(spec.retention_ms)


def test_apply_is_idempotent_and_repairs_drift(settings, admin, registry, topics):
    spans = SPANS.full_name(settings.topics.prefix)
    resource = ConfigResource(ConfigResource.Type.TOPIC, spans, incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(30)

    again = {r.topic: r for r in apply_catalog(admin, registry, settings.topics.prefix, 1)}
    assert again[spans].action == "updated"
    assert {r.action for t, r in again.items() if t != spans} == {"unchanged"}
    assert _configs(admin, spans)["retention.ms"].value == str(SPANS.retention_ms)
    assert {t: r.schema_id for t, r in again.items()} == {r.topic: r.schema_id for r in topics}
