"""Elasticsearch mappings for the output records, derived from their Avro schemas.

Every field of a record gets an explicit type (`dynamic: strict`, so a field the schema does not name
is a mapping error, not a surprise): strings are `keyword`, addresses `ip`, `timestamp-nanos` times
`date_nanos` (the sink writes them as ISO strings with nanoseconds), `timestamp-millis` times `date`,
numbers `long`/`double`, bytes `binary` (not indexed), string maps `flattened`, numeric maps an object
of `double`s. ECS names are field aliases over the record's own fields (`source.ip` -> `client_ip`,
`event.duration` -> `duration_ns`, ...), so Kibana and ECS-minded queries work on the same documents.

A new output field needs no change here: it is mapped from its Avro type. An ECS alias is one line in
`ECS_ALIASES`.
"""

from __future__ import annotations

from typing import Any

# ECS name -> the record field it stands for, per output topic (by catalog name).
_ENDPOINTS = {"source.ip": "client_ip", "source.port": "client_port", "destination.ip": "server_ip",
              "destination.port": "server_port"}
ECS_ALIASES: dict[str, dict[str, str]] = {
    "spans": {**_ENDPOINTS, "trace.id": "trace_id", "span.id": "span_id", "event.duration": "duration_ns",
              "event.start": "start_time", "event.end": "end_time", "network.protocol": "protocol",
              "network.transport": "l4_protocol", "url.path": "request_resource", "dns.question.name": "request_resource",
              "http.request.method": "request_type", "http.response.status_code": "response_code",
              "process.pid": "pid", "process.name": "comm", "service.name": "server_workload"},
    "paths": {**_ENDPOINTS, "trace.id": "trace_id", "event.duration": "duration_ns", "event.start": "start_time",
              "network.protocol": "protocol", "url.path": "request_resource", "http.request.method": "request_type",
              "http.response.status_code": "response_code", "service.name": "server_workload"},
    "metrics.red": {"service.name": "server_workload", "network.protocol": "protocol"},
    "metrics.network": {"source.ip": "client_ip", "destination.ip": "server_ip", "destination.port": "server_port",
                        "network.transport": "l4_protocol", "service.name": "server_workload"},
    "alerts": {"trace.id": "trace_id", "message": "summary", "rule.name": "kind", "event.severity": "severity",
               "service.name": "workload"},
    "profiles": {"process.pid": "pid", "process.name": "comm", "service.name": "workload", "event.start": "window_start",
                 "event.end": "window_end"},
}

_PRIMITIVES = {"string": {"type": "keyword", "ignore_above": 8191}, "int": {"type": "long"}, "long": {"type": "long"},
               "float": {"type": "double"}, "double": {"type": "double"}, "boolean": {"type": "boolean"},
               "bytes": {"type": "binary"}}


def field_mapping(name: str, avro_type: Any) -> dict[str, Any]:
    """The Elasticsearch mapping of one Avro field."""
    if isinstance(avro_type, list):  # a union: ["null", X]
        options = [t for t in avro_type if t != "null"]
        if len(options) != 1:
            raise ValueError(f"{name}: a union of {options} has no single Elasticsearch type")
        return field_mapping(name, options[0])
    if isinstance(avro_type, dict):
        logical, kind = avro_type.get("logicalType"), avro_type["type"]
        if logical == "timestamp-nanos":
            return {"type": "date_nanos"}
        if logical == "timestamp-millis":
            return {"type": "date", "format": "epoch_millis||strict_date_optional_time"}
        if kind == "enum":
            return {"type": "keyword"}
        if kind == "array":
            return field_mapping(name, avro_type["items"])
        if kind == "map":
            values = avro_type["values"]
            if values in ("double", "float", "long", "int") or (isinstance(values, list) and set(values) - {"null"} <= {"double", "long"}):
                return {"type": "object", "dynamic": True}  # numbers, mapped by the dynamic template below
            return {"type": "flattened"}
        if kind == "record":
            return {"type": "object", "properties": {f["name"]: field_mapping(f["name"], f["type"]) for f in avro_type["fields"]}}
        return field_mapping(name, kind)
    if avro_type in _PRIMITIVES:
        if avro_type == "string" and (name.endswith("_ip") or name == "ip"):
            return {"type": "ip"}
        return dict(_PRIMITIVES[avro_type])
    raise ValueError(f"{name}: no Elasticsearch type for Avro type {avro_type!r}")


def index_mapping(topic_name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The whole mapping of one output topic's documents: the record's fields, @timestamp and the ECS aliases."""
    properties: dict[str, Any] = {"@timestamp": {"type": "date_nanos"}}
    numeric_maps = []
    for f in schema["fields"]:
        properties[f["name"]] = mapping = field_mapping(f["name"], f["type"])
        if mapping.get("dynamic") is True:
            numeric_maps.append(f["name"])
    for ecs, target in sorted(ECS_ALIASES.get(topic_name, {}).items()):
        if target not in properties:
            raise ValueError(f"{topic_name}: ECS alias {ecs} points at {target}, which the schema does not have")
        _put(properties, ecs, {"type": "alias", "path": target})
    # Numbers under a numeric map are doubles; a key with dots in it (`tpp-pay-1.dns_queries_per_s`) makes objects on
    # the way, which the templates leave to dynamic mapping (they match numbers only).
    templates = [{f"{name}_{kind}s": {"path_match": f"{name}.*", "match_mapping_type": kind, "mapping": {"type": "double"}}}
                 for name in numeric_maps for kind in ("double", "long")]
    return {"dynamic": "strict", "dynamic_templates": templates, "properties": properties}


def _put(properties: dict[str, Any], dotted: str, mapping: dict[str, Any]) -> None:
    """Nest `a.b.c` as objects, as Elasticsearch shows a dotted name in its mapping."""
    head, _, rest = dotted.partition(".")
    if not rest:
        properties[head] = mapping
        return
    node = properties.setdefault(head, {"properties": {}})
    _put(node.setdefault("properties", {}), rest, mapping)
