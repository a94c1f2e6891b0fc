"""`tracetap profile`: flame graphs from the profiles index, for a workload, a process or a span.

The profiles the eBPF agent sends (schemas/avro/profile.avsc) are read back from Elasticsearch as an SRE would
query them: the windows of the selection's process or workload that overlap its time range, then merged and drawn
(tracetap/profiles.py selects, tracetap/flamegraph.py draws).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from elasticsearch import Elasticsearch, helpers

from cli.waterfall import iso_to_ns
from schemas.catalog import PROFILES, SPANS
from sinks.elasticsearch import index_name, iso_nanos
from tracetap import flamegraph
from tracetap.config import ElasticsearchSettings
from tracetap.errors import TracetapError
from tracetap.profiles import ON_CPU, Selection, folded

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DOCUMENTS = 20_000  # profile records read for one graph (a 10 s window per process and kind: over two days of one)
FORMATS = ("svg", "speedscope", "folded")


def seconds(text: str) -> float:
    """`90`, `90s`, `5m`, `2h` or `1d` as seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 60s, 5m, 2h or 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def output_format(path: str | None, wanted: str | None) -> str:
    """--format, or the output file's extension: .svg a flame graph, .json speedscope, anything else folded text."""
    if wanted:
        return wanted
    suffix = Path(path).suffix.lower() if path else ""
    return {".svg": "svg", ".json": "speedscope"}.get(suffix, "folded")


def span_selection(es: Elasticsearch, settings: ElasticsearchSettings, span_id: str, kind: str) -> tuple[Selection, dict[str, Any]]:
    """The span's process, thread and time range; a TracetapError when the span is not indexed or has no process."""
    hits = es.search(index=index_name(settings, SPANS), size=1, query={"term": {"span_id": span_id}}, ignore_unavailable=True,
                     allow_no_indices=True)["hits"]["hits"]
    if not hits:
        raise TracetapError(f"no span has the span id {span_id} in {index_name(settings, SPANS)}")
    try:
        return of_span_document(hits[0]["_source"], kind), hits[0]["_source"]
    except ValueError as exc:
        raise TracetapError(str(exc)) from None


def of_span_document(span: dict[str, Any], kind: str) -> Selection:
    """Selection.of_span for a span as indexed (its times ISO text); ValueError for a span without a process."""
    return Selection.of_span(dict(span, start_time=iso_to_ns(span["start_time"]), end_time=iso_to_ns(span["end_time"])), kind)


def search(es: Elasticsearch, settings: ElasticsearchSettings, selection: Selection) -> list[dict[str, Any]]:
    """The profile records the selection admits (times as epoch nanoseconds), read with a scroll."""
    filters: list[dict[str, Any]] = [{"term": {"kind": selection.kind}},
                                     {"range": {"window_end": {"gte": iso_nanos(selection.start_ns)}}},
                                     {"range": {"window_start": {"lte": iso_nanos(selection.end_ns)}}}]
    filters += [{"term": {name: value}} for name, value in (("workload", selection.workload), ("host", selection.host),
                                                              ("pid", selection.pid), ("stacks.tid", selection.tid)) if value is not None]
    records = []
    for hit in helpers.scan(es, index=index_name(settings, PROFILES), query={"query": {"bool": {"filter": filters}}},
                            size=500, ignore_unavailable=True, allow_no_indices=True):
        record = hit["_source"]
        record["window_start"], record["window_end"] = iso_to_ns(record["window_start"]), iso_to_ns(record["window_end"])
        records.append(record)
        if len(records) >= MAX_DOCUMENTS:
            break
    return [r for r in records if selection.admits(r)]


def render(stacks: dict[str, int], kind: str, fmt: str, title: str, subtitle: str = "") -> str:
    unit = flamegraph.SAMPLES if kind == ON_CPU else flamegraph.NANOSECONDS
    if fmt == "svg":
        return flamegraph.svg(stacks, title, unit=unit, subtitle=subtitle)
    if fmt == "speedscope":
        return json.dumps(flamegraph.speedscope(stacks, title, unit=unit))
    return flamegraph.to_folded(stacks)


def selection_title(selection: Selection) -> str:
    what = [f"workload {selection.workload}" if selection.workload else "",
            f"pid {selection.pid}" if selection.pid is not None else "", f"thread {selection.tid}" if selection.tid is not None else "",
            f"on {selection.host}" if selection.host else ""]
    kind = "on-CPU" if selection.kind == ON_CPU else "off-CPU"
    return f"{kind} profile of {' '.join(w for w in what if w) or 'every process'}"


def profile_stacks(es: Elasticsearch, settings: ElasticsearchSettings, selection: Selection) -> tuple[dict[str, int], list[dict[str, Any]]]:
    records = search(es, settings, selection)
    return folded(records, selection), records

