"""Kibana saved objects: structure Kibana 8.x's import API needs (they cannot be rendered here), references that
resolve, fields that exist in the mappings, and the import command's request to a local HTTP server."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from cli.main import main
from schemas.catalog import ALERTS, NETWORK_METRICS, PATHS, PROFILES, RED_METRICS, SPANS
from sinks.kibana import saved_objects, to_ndjson
from sinks.mappings import index_mapping

ROOT = Path(__file__).resolve().parents[2]
OBJECTS = saved_objects()
BY_ID = {(o["type"], o["id"]): o for o in OBJECTS}
VIEWS = {o["id"]: o["attributes"]["title"] for o in OBJECTS if o["type"] == "index-pattern"}
SPEC_OF_TITLE = {f"tracetap-{s.name}-*": s for s in (SPANS, PATHS, RED_METRICS, NETWORK_METRICS, ALERTS, PROFILES)}


def _fields(spec):
    """Every searchable field name of a type's mapping (dotted), flattened subfields allowed below a flattened field."""
    names, flattened = set(), set()

    def walk(properties, prefix=""):
        for name, mapping in properties.items():
            full = prefix + name
            names.add(full)
            if mapping.get("type") == "flattened":
                flattened.add(full)
            walk(mapping.get("properties", {}), full + ".")
    walk(index_mapping(spec.name, spec.schema())["properties"])
    return names, flattened


def test_the_committed_ndjson_is_what_the_builder_makes():
    assert (ROOT / "infra" / "kibana" / "tracetap.ndjson").read_text() == to_ndjson(OBJECTS)


def test_every_object_has_what_the_import_api_reads_and_ids_are_unique():
    assert len(BY_ID) == len(OBJECTS)
    for line in to_ndjson(OBJECTS).splitlines():
        obj = json.loads(line)
        assert {"type", "id", "attributes", "references"} <= set(obj) and obj["attributes"]["title"]
    assert set(VIEWS.values()) == set(SPEC_OF_TITLE)  # a data view per index, on its daily-index pattern
    assert all(o["attributes"]["timeFieldName"] == "@timestamp" for o in OBJECTS if o["type"] == "index-pattern")


def test_references_resolve_and_searches_name_fields_their_index_has():
    for obj in OBJECTS:
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in BY_ID, (obj["id"], ref)
        meta = obj["attributes"].get("kibanaSavedObjectMeta")
        if meta is None:
            continue
        source = json.loads(meta["searchSourceJSON"])
        if "indexRefName" in source:
            [ref] = [r for r in obj["references"] if r["name"] == source["indexRefName"]]
            names, flattened = _fields(SPEC_OF_TITLE[VIEWS[ref["id"]]])
            for column in obj["attributes"].get("columns", []):
                assert column in names or any(column.startswith(f + ".") for f in flattened), (obj["id"], column)
            if obj["type"] == "visualization":
                vis = json.loads(obj["attributes"]["visState"])
                for agg in vis["aggs"]:
                    assert agg["params"]["field"] in names, (obj["id"], agg)


def test_the_seeds_searches_and_the_red_dashboard_are_there():
    titles = {o["attributes"]["title"] for o in OBJECTS if o["type"] == "search"}
    assert {"Slow requests: where the time went", "Errors with their failed dependency", "DNS failures by client workload"} <= titles
    dashboard = BY_ID[("dashboard", "tracetap-red")]
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    assert len(panels) == len(dashboard["references"]) == 6
    assert {p["panelRefName"] for p in panels} == {r["name"] for r in dashboard["references"]}
    assert saved_objects("acme")[0]["attributes"]["title"] == "acme-spans-*"  # objects follow the index prefix


class _Kibana(BaseHTTPRequestHandler):
    seen = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Kibana.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        answer = {"success": True, "successCount": body.count(b'{"attributes": ')}  # one per object line
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def kibana():
    server = HTTPServer(("127.0.0.1", 0), _Kibana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Kibana.seen.clear()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_kibana_import_posts_the_ndjson_as_a_multipart_file_with_the_xsrf_header_and_credentials(kibana, monkeypatch, capsys):
    monkeypatch.setenv("TRACETAP_ELASTICSEARCH__USERNAME", "elastic")
    monkeypatch.setenv("TRACETAP_ELASTICSEARCH__PASSWORD", "s3cret")
    assert main(["kibana", "import", "--url", kibana, "--space", "ops"]) == 0
    [(path, headers, body)] = _Kibana.seen
    assert path == "/s/ops/api/saved_objects/_import?overwrite=true"
    assert headers["kbn-xsrf"] and headers["content-type"].startswith("multipart/form-data; boundary=")
    assert headers["authorization"] == "Basic ZWxhc3RpYzpzM2NyZXQ="  # elastic:s3cret
    assert b'filename="tracetap.ndjson"' in body and to_ndjson(OBJECTS).encode() in body
    assert f"imported {len(OBJECTS)} saved objects" in capsys.readouterr().out


def test_kibana_import_says_in_one_line_when_kibana_is_not_there(capsys):
    assert main(["kibana", "import", "--url", "http://127.0.0.1:9"]) == 69
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreachable" in err[0]
