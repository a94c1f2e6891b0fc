"""Kibana saved objects for the sink's indices: data views, saved searches and a RED dashboard.

`saved_objects(prefix)` builds them for an index prefix (`elasticsearch.index_prefix`), so a renamed
deployment gets working objects; `infra/kibana/tracetap.ndjson` is the same for the default prefix
(a test keeps it equal). `import_saved_objects` posts them to Kibana's saved-objects import API.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid
from typing import Any

from schemas.catalog import ALERTS, NETWORK_METRICS, PATHS, PROFILES, RED_METRICS, SPANS, TopicSpec
from tracetap.config import ElasticsearchSettings
from tracetap.errors import ServerUnavailable, TracetapError

_VERSION = {"coreMigrationVersion": "8.8.0"}


def _view_id(spec: TopicSpec) -> str:
    return f"tracetap-{spec.name.replace('.', '-')}"


def _data_view(prefix: str, spec: TopicSpec, name: str) -> dict[str, Any]:
    return {"type": "index-pattern", "id": _view_id(spec), **_VERSION, "typeMigrationVersion": "8.0.0",
            "attributes": {"title": f"{prefix}-{spec.name}-*", "timeFieldName": "@timestamp", "name": name},
            "references": []}


def _search(object_id: str, title: str, description: str, spec: TopicSpec, query: str, columns: list[str],
            sort: list[list[str]]) -> dict[str, Any]:
    source = {"query": {"query": query, "language": "kuery"}, "filter": [],
              "indexRefName": "kibanaSavedObjectMeta.searchSourceJSON.index"}
    return {"type": "search", "id": object_id, **_VERSION, "typeMigrationVersion": "8.0.0",
            "attributes": {"title": title, "description": description, "columns": columns, "sort": sort,
                           "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps(source)}},
            "references": [{"name": "kibanaSavedObjectMeta.searchSourceJSON.index", "type": "index-pattern", "id": _view_id(spec)}]}


def _red_chart(object_id: str, title: str, metric: dict[str, Any]) -> dict[str, Any]:
    """An aggregation-based line chart over metrics.red: `metric` per server workload over time."""
    vis_state = {
        "title": title, "type": "line",
        "aggs": [
            {"id": "1", "enabled": True, "type": metric["agg"], "params": {"field": metric["field"]}, "schema": "metric"},
            {"id": "2", "enabled": True, "type": "date_histogram", "schema": "segment",
             "params": {"field": "@timestamp", "interval": "auto", "min_doc_count": 1, "extended_bounds": {}}},
            {"id": "3", "enabled": True, "type": "terms", "schema": "group",
             "params": {"field": "server_workload", "size": 10, "order": "desc", "orderBy": "1", "missingBucket": True,
                        "missingBucketLabel": "(unknown)", "otherBucket": False}},
        ],
        "params": {
            "type": "line", "addTooltip": True, "addLegend": True, "legendPosition": "right", "times": [], "addTimeMarker": False,
            "grid": {"categoryLines": False},
            "categoryAxes": [{"id": "CategoryAxis-1", "type": "category", "position": "bottom", "show": True, "scale": {"type": "linear"},
                              "labels": {"show": True, "filter": True, "truncate": 100}, "title": {}}],
            "valueAxes": [{"id": "ValueAxis-1", "name": "LeftAxis-1", "type": "value", "position": "left", "show": True,
                           "scale": {"type": "linear", "mode": "normal"}, "labels": {"show": True, "rotate": 0, "filter": False, "truncate": 100},
                           "title": {"text": metric["label"]}}],
            "seriesParams": [{"show": True, "type": "line", "mode": "normal", "data": {"label": metric["label"], "id": "1"},
                              "valueAxis": "ValueAxis-1", "drawLinesBetweenPoints": True, "lineWidth": 2, "interpolate": "linear",
                              "showCircles": True}],
        },
    }
    source = {"query": {"query": "tap_side:SERVER_PROCESS", "language": "kuery"}, "filter": [],
              "indexRefName": "kibanaSavedObjectMeta.searchSourceJSON.index"}
    return {"type": "visualization", "id": object_id, **_VERSION, "typeMigrationVersion": "8.5.0",
            "attributes": {"title": title, "description": "", "uiStateJSON": "{}", "version": 1, "visState": json.dumps(vis_state),
                           "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps(source)}},
            "references": [{"name": "kibanaSavedObjectMeta.searchSourceJSON.index", "type": "index-pattern", "id": _view_id(RED_METRICS)}]}


def saved_objects(prefix: str = "tracetap") -> list[dict[str, Any]]:
    """Data views for each index, the seed's saved searches, and a RED dashboard per service."""
    objects = [
        _data_view(prefix, SPANS, "tracetap spans"), _data_view(prefix, PATHS, "tracetap paths"),
        _data_view(prefix, RED_METRICS, "tracetap RED metrics"), _data_view(prefix, NETWORK_METRICS, "tracetap network metrics"),
        _data_view(prefix, ALERTS, "tracetap alerts"), _data_view(prefix, PROFILES, "tracetap profiles"),
        _search("tracetap-slow-requests", "Slow requests: where the time went",
                "Requests over 1 s with their four-point segments: client stack, network and server stack each way, and the server's own time.",
                PATHS, "duration_ns >= 1000000000",
                ["server_workload", "request_type", "request_resource", "response_code", "duration_ns", "server_processing_ns",
                 "req_client_stack_ns", "req_network_ns", "req_server_stack_ns", "resp_server_stack_ns", "resp_network_ns",
                 "resp_client_stack_ns", "complete", "trace_id"],
                [["duration_ns", "desc"]]),
        _search("tracetap-slow-request-alerts", "Slow requests: the span that held the time",
                "SLOW_REQUEST alerts naming the culprit span and the path segment that held the time.",
                ALERTS, "kind:SLOW_REQUEST", ["workload", "summary", "attributes.culprit_span_id", "attributes.segment", "trace_id"],
                [["@timestamp", "desc"]]),
        _search("tracetap-errors-failed-dependency", "Errors with their failed dependency",
                "5xx responses whose trace holds a failed DNS answer or a refused connect (ERROR_WITH_FAILED_DEPENDENCY).",
                ALERTS, "kind:ERROR_WITH_FAILED_DEPENDENCY",
                ["workload", "summary", "attributes.dns.name", "attributes.dns.rcode", "suggestion", "trace_id"], [["@timestamp", "desc"]]),
        _search("tracetap-dns-failures", "DNS failures by client workload",
                "DNS answers other than NOERROR as the client processes saw them, with the name asked.",
                SPANS, 'protocol:DNS and tap_side:CLIENT_PROCESS and not response_message:NOERROR',
                ["client_workload", "request_resource", "response_message", "server_ip", "duration_ns"], [["@timestamp", "desc"]]),
        _search("tracetap-off-cpu", "Off-CPU: where threads waited",
                "Off-CPU profile windows by workload and process, longest blocked first (draw one with tracetap profile --off-cpu).",
                PROFILES, "kind:OFF_CPU", ["workload", "comm", "pid", "total_off_cpu_ns", "stacks.leaf", "window_end"],
                [["total_off_cpu_ns", "desc"]]),
        _search("tracetap-dns-storms", "DNS storms", "DNS_STORM alerts: pods flooding the resolver with NXDOMAIN, and the fix.",
                ALERTS, "kind:DNS_STORM", ["workloads", "summary", "suggestion"], [["@timestamp", "desc"]]),
        _red_chart("tracetap-red-rate", "RED: requests per window by service", {"agg": "sum", "field": "request_count", "label": "requests"}),
        _red_chart("tracetap-red-errors", "RED: errors per window by service", {"agg": "sum", "field": "error_count", "label": "errors"}),
        _red_chart("tracetap-red-p99", "RED: p99 latency (ns) by service", {"agg": "max", "field": "latency_p99_ns", "label": "p99 ns"}),
    ]
    panels_on = [("tracetap-red-rate", "visualization"), ("tracetap-red-errors", "visualization"), ("tracetap-red-p99", "visualization"),
                 ("tracetap-slow-request-alerts", "search"), ("tracetap-errors-failed-dependency", "search"),
                 ("tracetap-dns-failures", "search")]
    panels, references = [], []
    for i, (object_id, kind) in enumerate(panels_on):
        ref = f"panel_{i}"
        panels.append({"version": "8.8.0", "type": kind, "panelIndex": str(i + 1), "panelRefName": ref, "embeddableConfig": {},
                       "gridData": {"x": (i % 3) * 16, "y": (i // 3) * 15, "w": 16, "h": 15, "i": str(i + 1)}})
        references.append({"name": ref, "type": kind, "id": object_id})
    objects.append({"type": "dashboard", "id": "tracetap-red", **_VERSION, "typeMigrationVersion": "8.9.0",
                    "attributes": {"title": "tracetap: RED per service, slow requests, failed dependencies",
                                   "description": "Rate, errors and p99 per server workload (server process side), with the findings beside them.",
                                   "panelsJSON": json.dumps(panels), "optionsJSON": json.dumps({"useMargins": True, "hidePanelTitles": False}),
                                   "timeRestore": False, "version": 1,
                                   "kibanaSavedObjectMeta": {"searchSourceJSON": json.dumps({"query": {"query": "", "language": "kuery"},
                                                                                             "filter": []})}},
                    "references": references})
    return objects


def to_ndjson(objects: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(o, sort_keys=True) + "\n" for o in objects)


def import_saved_objects(url: str, ndjson: str, es: ElasticsearchSettings, space: str | None = None,
                         timeout_s: float = 30.0) -> dict[str, Any]:
    """POST the objects to Kibana's `_import` API (overwrite: the objects are ours); credentials are Elasticsearch's."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"tracetap.ndjson\"\r\n"
            f"Content-Type: application/ndjson\r\n\r\n{ndjson}\r\n--{boundary}--\r\n").encode()
    base = url.rstrip("/") + (f"/s/{space}" if space else "")
    request = urllib.request.Request(f"{base}/api/saved_objects/_import?overwrite=true", data=body, method="POST",
                                     headers={"kbn-xsrf": "tracetap", "Content-Type": f"multipart/form-data; boundary={boundary}"})
    if es.api_key:
        request.add_header("Authorization", f"ApiKey {es.api_key}")
    elif es.username:
        token = base64.b64encode(f"{es.username}:{es.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    context = None
    if url.startswith("https://") and es.ca_certs:
        import ssl

        context = ssl.create_default_context(cafile=str(es.ca_certs))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        raise TracetapError(f"Kibana refused the import: HTTP {exc.code} {exc.read()[:300].decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ServerUnavailable(f"Kibana at {url} is unreachable: {getattr(exc, 'reason', exc)}") from None
    if not answer.get("success"):
        errors = [f"{e.get('type')}/{e.get('id')}: {e.get('error', {}).get('type')}" for e in answer.get("errors", [])]
        raise TracetapError(f"Kibana imported {answer.get('successCount', 0)} objects and refused {len(errors)}: {'; '.join(errors[:5])}")
    return answer
