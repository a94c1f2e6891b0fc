"""A trace as a waterfall, read back from Elasticsearch: `tracetap trace ID` and the demo's report.

The trace is assembled at query time, as DeepFlow's querier does: from the spans that carry the id (as a
span id or a trace id), each round fetches the parents they name, the children that name them and the
other spans of the trace ids seen, until a round adds nothing or `max_rounds` is reached. So a trace is
whole even where the stream could only link its hops (parent_span_id) and not give them one trace id.
"""

from __future__ import annotations

import calendar
import html
import time
from dataclasses import dataclass
from typing import Any

from elasticsearch import Elasticsearch

from schemas.catalog import SPANS
from sinks.elasticsearch import index_name
from tracetap.config import ElasticsearchSettings

MAX_ROUNDS = 30  # hops a trace is followed through, each way
MAX_SPANS = 5000
_TERMS = 1000  # ids per terms query


@dataclass
class Row:
    """One span of a trace's waterfall."""

    depth: int
    label: str
    start_ns: int
    duration_ns: int
    failed: bool


@dataclass
class Assembled:
    spans: list[dict[str, Any]]  # the span documents, in (start, id) order
    rounds: int  # search rounds it took
    complete: bool  # False: cut at MAX_ROUNDS or MAX_SPANS


def assemble(es: Elasticsearch, settings: ElasticsearchSettings, ident: str, max_rounds: int = MAX_ROUNDS) -> Assembled:
    """Every span linked to the one with this span id or trace id (empty when none has it)."""
    index = index_name(settings, SPANS)
    found: dict[str, dict[str, Any]] = {}
    asked: dict[str, set[str]] = {"span_id": set(), "parent_span_id": set(), "trace_id": set()}
    wanted = {"span_id": {ident}, "trace_id": {ident}, "parent_span_id": set()}
    rounds = 0
    while rounds < max_rounds and len(found) < MAX_SPANS:
        new = 0
        for field, values in wanted.items():
            values -= asked[field]
            asked[field] |= values
            for chunk in _chunks(sorted(values)):
                for span in _search(es, index, field, chunk):
                    if span["span_id"] not in found:
                        found[span["span_id"]] = span
                        new += 1
        rounds += 1
        if not new:
            break
        wanted = {"span_id": {s["parent_span_id"] for s in found.values() if s.get("parent_span_id")},
                  "parent_span_id": set(found), "trace_id": {s["trace_id"] for s in found.values() if s.get("trace_id")}}
    complete = rounds < max_rounds and len(found) < MAX_SPANS
    return Assembled(sorted(found.values(), key=lambda s: (s["start_time"], s["span_id"])), rounds, complete)


def _chunks(values: list[str]) -> list[list[str]]:
    return [values[i:i + _TERMS] for i in range(0, len(values), _TERMS)]


def _search(es: Elasticsearch, index: str, field: str, values: list[str]) -> list[dict[str, Any]]:
    hits = es.search(index=index, size=MAX_SPANS, query={"terms": {field: values}}, ignore_unavailable=True,
                     allow_no_indices=True)["hits"]["hits"]
    return [hit["_source"] for hit in hits]


def rows_of(spans: list[dict[str, Any]]) -> list[Row]:
    """Span documents as waterfall rows, each indented under its parent."""
    spans = sorted(spans, key=lambda s: (s["start_time"], s["span_id"]))
    ids = {s["span_id"]: s for s in spans}

    def depth(span: dict[str, Any]) -> int:
        d, seen = 0, set()
        while span.get("parent_span_id") in ids and span["span_id"] not in seen:
            seen.add(span["span_id"])
            span, d = ids[span["parent_span_id"]], d + 1
        return d

    rows = []
    for s in spans:
        what = " ".join(x for x in (s.get("request_type"), s.get("request_resource")) if x) or s["protocol"]
        answer = (s.get("response_code") if s["protocol"] == "HTTP" else None) or s.get("response_message") or s.get("error_class") or ""
        side = s["tap_side"].lower().replace("_", "-")
        protocol = f"{s['protocol']}/TLS" if s.get("tls") and s["protocol"] != "TLS" else s["protocol"]  # read inside TLS
        label = f"{side:<14} {s.get('client_workload') or s['client_ip']} -> {s.get('server_workload') or s['server_ip']}  {protocol} {what}  {answer}"
        rows.append(Row(depth(s), label, iso_to_ns(s["start_time"]), s["duration_ns"], bool(s.get("error_class"))))
    return rows


def text_waterfall(rows: list[Row], width: int = 30) -> list[str]:
    start = min(r.start_ns for r in rows)
    span = max(max(r.start_ns + r.duration_ns for r in rows) - start, 1)
    lines = []
    for r in rows:
        left = int((r.start_ns - start) / span * width)
        bar = max(1, int(r.duration_ns / span * width))
        lines.append(f"{' ' * left}{'#' * bar}{' ' * max(0, width - left - bar)} {r.duration_ns / 1e6:9.2f} ms  {'  ' * r.depth}{r.label}"
                     + ("  !" if r.failed else ""))
    return lines


def html_waterfall(rows: list[Row]) -> str:
    start = min(r.start_ns for r in rows)
    span = max(max(r.start_ns + r.duration_ns for r in rows) - start, 1)
    out = ["<table class='waterfall'>"]
    for r in rows:
        left, width = (r.start_ns - start) / span * 100, max(r.duration_ns / span * 100, 0.3)
        out.append(f"<tr><td class='label' style='padding-left:{r.depth}em'>{html.escape(r.label)}</td>"
                   f"<td class='track'><div class='bar{' failed' if r.failed else ''}' style='margin-left:{left:.2f}%;width:{width:.2f}%'></div></td>"
                   f"<td>{r.duration_ns / 1e6:.2f} ms</td></tr>")
    out.append("</table>")
    return "".join(out)


def html_page(title: str, body: str) -> str:
    """One self-contained HTML file (inline CSS, nothing fetched)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{body}</body></html>")


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}section{border-left:4px solid #ccc;padding:.2em 1em;margin:1.5em 0}
section.found{border-color:#2ca02c}section.missing{border-color:#d62728}h2 span{font-size:.6em;padding:.1em .4em;background:#eee}
.staged{color:#666}table{border-collapse:collapse}td,th{padding:2px 8px;font-size:13px;text-align:left}
.waterfall{width:100%}.waterfall .label{font-family:monospace;white-space:pre;font-size:12px}.track{width:40%;background:#f4f4f4}
.bar{height:12px;background:#1f77b4}.bar.failed{background:#d62728}.segments{display:flex;height:18px;width:100%}
.seg,.k{display:inline-block;height:18px}.k{width:12px;height:12px;margin:0 4px 0 12px}
.s0{background:#aec7e8}.s1{background:#ff9896}.s2{background:#98df8a}.s3{background:#1f77b4}.s4{background:#2ca02c}.s5{background:#d62728}
.s6{background:#c5b0d5}.s7{background:#ff7f0e}.hint{color:#666}"""


def iso_to_ns(iso: str) -> int:
    """An ISO time with up to nanoseconds (as the sink writes date_nanos) as epoch nanoseconds."""
    whole, _, frac = iso.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])
