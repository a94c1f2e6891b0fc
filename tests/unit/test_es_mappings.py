"""The Elasticsearch mappings derived from the output schemas (checked against a real Elasticsearch in
tests/integration/test_sink_elasticsearch.py)."""

import pytest

from schemas.catalog import ALERTS, NETWORK_METRICS, PATHS, PROFILES, RED_METRICS, SPANS
from sinks.elasticsearch import INDEXED_TYPES, daily_index, to_document
from sinks.mappings import ECS_ALIASES, field_mapping, index_mapping
from tracetap.config import ElasticsearchSettings


def _leaf(properties, dotted):
    node = {"properties": properties}
    for part in dotted.split("."):
        node = node["properties"][part]
    return node


@pytest.mark.parametrize("spec", [SPANS, PATHS, RED_METRICS, NETWORK_METRICS, ALERTS, PROFILES], ids=lambda s: s.name)
def test_every_schema_field_has_an_explicit_type_and_nothing_else_is_accepted(spec):
    mapping = index_mapping(spec.name, spec.schema())
    assert mapping["dynamic"] == "strict"
    names = [f["name"] for f in spec.schema()["fields"]]
    assert set(names) | {"@timestamp"} <= set(mapping["properties"])
    for name in names:
        assert mapping["properties"][name].get("type") in ("keyword", "ip", "date_nanos", "date", "long", "double", "boolean",
                                                            "binary", "flattened", "object"), name


def test_a_profile_s_stacks_are_objects_whose_threads_stacks_and_values_are_searchable():
    profiles = index_mapping("profiles", PROFILES.schema())["properties"]
    assert profiles["kind"] == {"type": "keyword"} and profiles["window_start"] == {"type": "date_nanos"}
    stacks = profiles["stacks"]
    assert stacks["type"] == "object"
    assert stacks["properties"]["tid"] == {"type": "long"} and stacks["properties"]["off_cpu_ns"] == {"type": "long"}
    assert stacks["properties"]["stack"] == {"type": "keyword", "ignore_above": 8191}
    assert stacks["properties"]["leaf"]["type"] == "keyword"


def test_types_follow_the_avro_types_and_names():
    spans = index_mapping("spans", SPANS.schema())["properties"]
    assert spans["client_ip"] == {"type": "ip"} and spans["server_port"] == {"type": "long"}
    assert spans["start_time"] == {"type": "date_nanos"} and spans["duration_ns"] == {"type": "long"}
    assert spans["protocol"] == {"type": "keyword"} and spans["attributes"] == {"type": "flattened"}
    assert spans["connection_closed"] == {"type": "boolean"}
    red = index_mapping("metrics.red", RED_METRICS.schema())["properties"]
    assert red["window_start"]["type"] == "date" and red["latency_sketch"] == {"type": "binary"}
    alerts = index_mapping("alerts", ALERTS.schema())
    assert alerts["properties"]["measurements"] == {"type": "object", "dynamic": True}
    assert alerts["dynamic_templates"] == [
        {"measurements_doubles": {"path_match": "measurements.*", "match_mapping_type": "double", "mapping": {"type": "double"}}},
        {"measurements_longs": {"path_match": "measurements.*", "match_mapping_type": "long", "mapping": {"type": "double"}}}]
    with pytest.raises(ValueError, match="no single Elasticsearch type"):
        field_mapping("x", ["null", "string", "long"])


@pytest.mark.parametrize("topic", sorted(ECS_ALIASES))
def test_ecs_names_are_aliases_of_the_record_fields(topic):
    spec = next(t.topic for t in INDEXED_TYPES if t.topic.name == topic)
    properties = index_mapping(topic, spec.schema())["properties"]
    for ecs, target in ECS_ALIASES[topic].items():
        assert _leaf(properties, ecs) == {"type": "alias", "path": target}
    assert ECS_ALIASES["spans"]["event.duration"] == "duration_ns" and ECS_ALIASES["spans"]["source.ip"] == "client_ip"


def test_a_document_carries_nanosecond_times_as_iso_strings_and_goes_to_its_days_index():
    spans = next(t for t in INDEXED_TYPES if t.topic is SPANS)
    record = {"span_id": "s1", "start_time": 1_795_600_000_123_456_789, "end_time": None, "duration_ns": 5}
    doc = to_document(spans, record)
    assert doc["start_time"] == "2026-11-25T09:46:40.123456789Z" == doc["@timestamp"] and doc["end_time"] is None
    assert doc["duration_ns"] == 5
    red = next(t for t in INDEXED_TYPES if t.topic is RED_METRICS)
    doc = to_document(red, {"metric_id": "m", "window_start": 1_795_600_000_000, "window_end": 1_795_600_010_000,
                            "latency_sketch": b"\x00\x01"})
    assert doc["latency_sketch"] == "AAE=" and doc["window_start"] == 1_795_600_000_000  # epoch_millis, as mapped
    assert doc["@timestamp"] == "2026-11-25T09:46:40.000000000Z"
    settings = ElasticsearchSettings(index_prefix="tt")
    assert daily_index(settings, SPANS, 1_795_600_000_123_456_789) == "tt-spans-2026.11.25"
    assert daily_index(settings, SPANS, 1_795_600_000_123_456_789 - 10 * 3600 * 1_000_000_000) == "tt-spans-2026.11.24"


class _Indices:
    def __init__(self, names):
        self.names, self.deleted = names, []

    def get(self, index, **_):
        prefix = index.rstrip("*")
        return {n: {} for n in self.names if n.startswith(prefix)}

    def delete(self, index):
        self.deleted += index.split(",")


class _Es:
    def __init__(self, names):
        self.indices = _Indices(names)


def test_retention_drops_whole_days_past_each_types_limit_and_nothing_else():
    from sinks.elasticsearch import apply_retention

    settings = ElasticsearchSettings(index_prefix="tt", retention_days={"spans": 7, "alerts": 0})
    es = _Es(["tt-spans-2026.11.17", "tt-spans-2026.11.18", "tt-spans-2026.11.25", "tt-spans-old", "tt-alerts-2020.01.01"])
    now = 1_795_600_000  # 2026-11-25
    assert apply_retention(es, settings, now_s=now) == ["tt-spans-2026.11.17"]  # 8 days old; the 18th is 7 days old
    assert es.indices.deleted == ["tt-spans-2026.11.17"]  # alerts kept forever (0), a foreign name left alone


def test_the_client_authenticates_and_verifies_as_configured(tmp_path):
    from sinks.elasticsearch import es_client

    ca = tmp_path / "ca.pem"
    import subprocess

    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k.pem"), "-out", str(ca),
                    "-days", "1", "-subj", "/CN=tracetap-test"], check=True, capture_output=True)
    with_key = es_client(ElasticsearchSettings(hosts=["https://es.example:9200"], api_key="a2V5", ca_certs=ca))
    assert with_key._headers["authorization"] == "ApiKey a2V5"
    node = with_key.transport.node_pool.get()
    assert node.config.scheme == "https" and node.config.ca_certs == str(ca) and node.config.verify_certs
    basic = es_client(ElasticsearchSettings(username="elastic", password="s3cret"))
    assert basic._headers["authorization"] == "Basic ZWxhc3RpYzpzM2NyZXQ="
