"""The topic catalog and the Avro contracts are a public API: check them as such."""

import re
from pathlib import Path

import fastavro
import pytest

from schemas.catalog import CATALOG, markdown_table

ROOT = Path(__file__).resolve().parents[2]
TIME_NAMES = re.compile(r"(^|_)(time|timestamp)$|^window_(start|end)$")


def _fields(schema):
    """Every record field in a schema, recursing into nested records."""
    for field in schema.get("fields", []):
        yield schema["name"], field
        for t in field["type"] if isinstance(field["type"], list) else [field["type"]]:
            if isinstance(t, dict) and t.get("type") == "record":
                yield from _fields(t)


@pytest.mark.parametrize("spec", CATALOG, ids=lambda s: s.name)
def test_every_schema_parses_and_is_documented(spec):
    schema = spec.schema()
    fastavro.parse_schema(schema)
    assert schema["namespace"].startswith("io.tracetap.")
    assert schema.get("doc")
    for record, field in _fields(schema):
        assert field.get("doc"), f"{record}.{field['name']} has no doc"


@pytest.mark.parametrize("spec", CATALOG, ids=lambda s: s.name)
def test_times_use_timestamp_logical_types(spec):
    for record, field in _fields(spec.schema()):
        if TIME_NAMES.search(field["name"]):
            types = field["type"] if isinstance(field["type"], list) else [field["type"]]
            logical = [t.get("logicalType") for t in types if isinstance(t, dict)]
            assert logical and logical[0].startswith("timestamp-"), f"{record}.{field['name']}"


@pytest.mark.parametrize("spec", CATALOG, ids=lambda s: s.name)
def test_nullable_fields_default_to_null_so_they_can_evolve(spec):
    for record, field in _fields(spec.schema()):
        if isinstance(field["type"], list) and field["type"][0] == "null":
            assert "default" in field and field["default"] is None, f"{record}.{field['name']}"


def test_flow_keyed_topics_are_co_partitioned():
    flow_keyed = [spec for spec in CATALOG if spec.key == "flow id"]
    assert len(flow_keyed) >= 5
    assert len({spec.partitions for spec in flow_keyed}) == 1


def test_topic_names_are_unique_and_the_resource_topic_is_compacted():
    names = [spec.name for spec in CATALOG]
    assert len(names) == len(set(names))
    assert {s.name: s.cleanup_policy for s in CATALOG}["resources"] == "compact"


def test_readme_topic_table_matches_the_catalog():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table("tracetap.") in readme, "regenerate with: .venv/bin/tracetap topics list --markdown"
