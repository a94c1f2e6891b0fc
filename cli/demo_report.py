"""The demo's findings, read back from Elasticsearch as an SRE would query them in Kibana, and their reports:
text for the terminal and one self-contained HTML file (inline CSS and SVG, nothing fetched).

Each scenario's query names what it found (the alert, the span that held the time, the segment, the pods);
the demo then compares that with the fault it staged, so a finding that names the wrong service fails.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import Elasticsearch

from cli.waterfall import CSS, Row, assemble, html_waterfall, iso_to_ns, rows_of, text_waterfall
from cli.profile import of_span_document, profile_stacks
from schemas.catalog import ALERTS, PATHS, PROFILES, RED_METRICS, SPANS
from sinks.elasticsearch import index_name, iso_nanos
from tracetap import flamegraph
from tracetap.config import ElasticsearchSettings
from tracetap.paths import SEGMENTS
from tracetap.profiles import OFF_CPU, hotspots


@dataclass
class Finding:
    scenario: str
    title: str
    expected: str  # the staged fault, in words
    found: bool = False  # the finding read from Elasticsearch names the staged fault
    headline: str = "nothing found"
    details: list[str] = field(default_factory=list)
    waterfall: list[Row] = field(default_factory=list)
    segments: dict[str, int] = field(default_factory=dict)  # a path record's four-point breakdown, ns
    flame_graph: str = ""  # an SVG flame graph of the thread that held the time
    flame_title: str = ""


@dataclass
class Results:
    findings: list[Finding]
    red: list[dict[str, Any]]  # per server workload: requests, errors, p99
    p99_series: dict[str, list[tuple[int, float]]]  # server workload -> (window start ms, p99 ms)
    counts: dict[str, int]  # documents of the run per index
    tls: list[str] = field(default_factory=list)  # what was seen inside TLS, per server workload


class Findings:
    """Queries over one run's documents (those at or after `since_ns`) in the sink's indices."""

    def __init__(self, es: Elasticsearch, settings: ElasticsearchSettings, since_ns: int) -> None:
        # A search the cluster cannot serve for a moment (503 while a new index's shards start, 429 under load) is retried
        self.es = es.options(max_retries=8, retry_on_status=(429, 502, 503, 504), retry_on_timeout=True)
        self.settings, self.since_ns = settings, since_ns
        self.since_iso = iso_nanos(since_ns)

    def _search(self, spec: Any, filters: list[dict[str, Any]], size: int = 500) -> list[dict[str, Any]]:
        hits = self.es.search(index=index_name(self.settings, spec), size=size, query={"bool": {"filter": filters}},
                              ignore_unavailable=True, allow_no_indices=True)["hits"]["hits"]
        return [hit["_source"] for hit in hits]

    def _alerts(self, kind: str) -> list[dict[str, Any]]:
        return self._search(ALERTS, [{"term": {"kind": kind}}, {"range": {"time": {"gte": self.since_iso}}}])

    def counts(self) -> dict[str, int]:
        out = {}
        for spec, time_field, since in ((SPANS, "start_time", self.since_iso), (PATHS, "start_time", self.since_iso),
                                        (RED_METRICS, "window_start", self.since_ns // 1_000_000), (ALERTS, "time", self.since_iso),
                                        (PROFILES, "window_end", self.since_iso)):
            out[spec.name] = self.es.count(index=index_name(self.settings, spec), query={"range": {time_field: {"gte": since}}},
                                           ignore_unavailable=True, allow_no_indices=True)["count"]
        return out

    def waterfall(self, trace_id: str) -> list[Row]:
        return rows_of(assemble(self.es, self.settings, trace_id).spans)

    def path(self, trace_id: str | None, server_workload: str) -> dict[str, Any] | None:
        filters: list[dict[str, Any]] = [{"term": {"server_workload": server_workload}}, {"range": {"start_time": {"gte": self.since_iso}}}]
        if trace_id:
            filters.append({"term": {"trace_id": trace_id}})
        paths = self._search(PATHS, filters)
        return max(paths, key=lambda p: (len(p.get("points_seen") or []), p["duration_ns"]), default=None)

    def red(self) -> tuple[list[dict[str, Any]], dict[str, list[tuple[int, float]]]]:
        windows = self._search(RED_METRICS, [{"term": {"tap_side": "SERVER_PROCESS"}}, {"term": {"protocol": "HTTP"}},
                                             {"range": {"window_start": {"gte": self.since_ns // 1_000_000}}}], size=2000)
        table: dict[str, dict[str, Any]] = {}
        series: dict[str, dict[int, float]] = {}
        for w in windows:
            name = w.get("server_workload") or "?"
            row = table.setdefault(name, {"service": name, "requests": 0, "errors": 0, "p99_ms": 0.0})
            row["requests"] += w["request_count"]
            row["errors"] += w["error_count"]
            row["p99_ms"] = max(row["p99_ms"], w["latency_p99_ns"] / 1e6)
            start = _ms(w["window_start"])
            points = series.setdefault(name, {})
            points[start] = max(points.get(start, 0.0), w["latency_p99_ns"] / 1e6)
        return sorted(table.values(), key=lambda r: -r["p99_ms"]), {n: sorted(p.items()) for n, p in sorted(series.items())}

    # the four scenarios ------------------------------------------------------------------------------
    def slow_backend(self) -> Finding:
        f = Finding("slow-backend", "1. Slow backend", "a web request takes ~3 s; the time is held by oms-app's own processing")
        alerts = self._alerts("SLOW_REQUEST")
        if not alerts:
            return f
        # The staged fault is oms-app's: other slow requests (a DNS answer the Services' NAT lost, under the storm) are not it
        alert = max(alerts, key=lambda a: (a.get("workload") == "oms-app", a["measurements"].get("duration_ns", 0)))
        segment = alert["attributes"].get("segment", "?")
        f.headline = f"SLOW_REQUEST: {alert['summary']}"
        spans = assemble(self.es, self.settings, alert["trace_id"]).spans
        f.waterfall = rows_of(spans)
        self._off_cpu(f, next((s for s in spans if s.get("server_workload") == "oms-app" and s["tap_side"] == "SERVER_PROCESS"
                               and s.get("pid") is not None), None))
        path = self.path(alert["trace_id"], alert["workload"]) if alert.get("workload") else None
        if path:
            f.segments = {name: path[name] for name in SEGMENTS if path.get(name) is not None}
            f.details.append(f"four-point path {path.get('client_workload')} -> {path.get('server_workload')} "
                             f"({len(path['points_seen'])} of 4 points): server processing {path.get('server_processing_ns', 0) / 1e9:.2f} s "
                             f"of {path['duration_ns'] / 1e9:.2f} s; network both ways "
                             f"{((path.get('req_network_ns') or 0) + (path.get('resp_network_ns') or 0)) / 1e6:.2f} ms")
        if alert.get("suggestion"):
            f.details.append(f"suggestion: {alert['suggestion']}")
        f.found = alert.get("workload") == "oms-app" and segment in ("server_processing_ns", "server_own_ns")
        return f

    def _off_cpu(self, f: Finding, span: dict[str, Any] | None) -> None:
        """The off-CPU flame graph of the thread that served the span, during it: where the request waited."""
        if span is None:
            return
        stacks, _ = profile_stacks(self.es, self.settings, of_span_document(span, OFF_CPU))
        if not stacks:
            f.details.append(f"no off-CPU profile of {span.get('comm')} pid {span['pid']} thread {span.get('tid')} (yet)")
            return
        total = sum(stacks.values())
        waited = ", ".join(f"{value / total:.0%} in {frame}" for frame, value in hotspots(stacks, OFF_CPU, 3) if value >= total / 100)
        f.flame_title = (f"off-CPU: {span.get('server_workload')}'s thread {span.get('tid')} ({span.get('comm')} pid {span['pid']}) "
                         f"during {span.get('request_type') or ''} {span.get('request_resource') or ''}")
        f.details.append(f"{f.flame_title}: {total / 1e9:.2f} s blocked, {waited}")
        f.flame_graph = flamegraph.svg(stacks, f.flame_title, unit=flamegraph.NANOSECONDS, width=960)

    def slow_service(self, table: list[dict[str, Any]]) -> Finding:
        f = Finding("slow-service", "2. Slow service", "the retail path takes ~500 ms, held by acuiagwapp")
        row = next((r for r in table if r["service"] == "acuiagwapp"), None)
        if row is None:
            return f
        f.headline = f"RED: acuiagwapp p99 {row['p99_ms']:.0f} ms over {row['requests']} requests ({row['errors']} errors)"
        path = self.path(None, "acuiagwapp")
        held = None
        if path:
            f.segments = {name: path[name] for name in SEGMENTS if path.get(name) is not None}
            held = max(f.segments, key=lambda n: f.segments[n]) if f.segments else None
            f.details.append(f"path {path.get('client_workload')} -> acuiagwapp ({len(path['points_seen'])} of 4 points): "
                             f"{path['duration_ns'] / 1e6:.0f} ms, most of it in {(held or '?').removesuffix('_ns').replace('_', ' ')}")
        f.found = row["p99_ms"] >= 400 and held == "server_processing_ns"
        return f

    def dns_502(self) -> Finding:
        f = Finding("dns-502", "3. 502 from DNS", "gateway answers 502 because payment-backend does not resolve")
        alerts = self._alerts("ERROR_WITH_FAILED_DEPENDENCY")
        if not alerts:
            return f
        alert = min(alerts, key=lambda a: a["time"])
        f.headline = f"ERROR_WITH_FAILED_DEPENDENCY: {alert['summary']} ({len(alerts)} such requests)"
        f.waterfall = self.waterfall(alert["trace_id"])
        name = alert["attributes"].get("dns.name", "")
        f.found = alert.get("workload") == "gateway" and name.startswith("payment-backend")
        return f

    def dns_storm(self) -> Finding:
        f = Finding("dns-storm", "4. DNS storm", "tpp-pay-1..3 resolve api.partner-bank.com under ndots:5")
        alerts = self._alerts("DNS_STORM")
        if not alerts:
            return f
        pods = sorted({w for a in alerts for w in a["workloads"]})
        worst = max(alerts, key=lambda a: a["measurements"].get("dns_queries_per_s", 0))
        f.headline = f"DNS_STORM: {', '.join(pods)}: up to {worst['measurements']['dns_queries_per_s']:.0f} queries/s, " \
                     f"{worst['measurements']['nxdomain_ratio']:.0%} NXDOMAIN ({len(alerts)} windows)"
        for pod in pods:
            rate = max((a["measurements"].get(f"{pod}.dns_queries_per_s", 0) for a in alerts), default=0)
            f.details.append(f"{pod}: {rate:.0f} queries/s")
        f.details.append(f"names asked: {worst['attributes'].get('top_names', '')}")
        f.details.append(f"suggestion: {worst.get('suggestion')}")
        f.found = {"tpp-pay-1", "tpp-pay-2", "tpp-pay-3"} <= set(pods)
        return f

    def tls(self) -> list[str]:
        """Spans with `tls: true`, per server workload and tap point: HTTP from the processes' OpenSSL plaintext, and TLS
        records at the NICs."""
        answer = self.es.search(index=index_name(self.settings, SPANS), size=0, ignore_unavailable=True, allow_no_indices=True,
                                query={"bool": {"filter": [{"term": {"tls": True}}, {"range": {"start_time": {"gte": self.since_iso}}}]}},
                                aggs={"workload": {"terms": {"field": "server_workload", "missing": "?"},
                                                   "aggs": {"protocol": {"terms": {"field": "protocol"},
                                                                         "aggs": {"side": {"terms": {"field": "tap_side"}}}}}}})
        out = []
        for workload in answer.get("aggregations", {}).get("workload", {}).get("buckets", []):
            kinds = "; ".join(f"{p['doc_count']} {p['key']} spans (" + ", ".join(f"{s['key']} {s['doc_count']}" for s in p["side"]["buckets"]) + ")"
                              for p in workload["protocol"]["buckets"])
            out.append(f"{workload['key']}: {kinds}")
        return out

    def collect(self, scenarios: list[str]) -> Results:
        red, series = self.red()
        queries = {"slow-backend": self.slow_backend, "slow-service": lambda: self.slow_service(red), "dns-502": self.dns_502,
                   "dns-storm": self.dns_storm}
        return Results([queries[s]() for s in scenarios], red, series, self.counts(), self.tls())


# rendering ----------------------------------------------------------------------------------------------
def text_report(results: Results) -> str:
    out = []
    for f in results.findings:
        out.append(f"{f.title}  [{'FOUND' if f.found else 'NOT FOUND'}]  staged: {f.expected}")
        out.append(f"  {f.headline}")
        if f.waterfall:
            out.append("  trace waterfall:")
            out.extend(f"    {line}" for line in text_waterfall(f.waterfall))
        if f.segments:
            out.append("  segments: " + ", ".join(f"{n.removesuffix('_ns').replace('_', ' ')} {v / 1e6:.2f} ms" for n, v in f.segments.items()))
        out.extend(f"  {line}" for line in f.details)
        out.append("")
    out.append("Inside TLS (HTTP read from OpenSSL in the processes, TLS records at the NICs):")
    out.extend(f"  {line}" for line in results.tls or ["nothing seen"])
    out.append("")
    out.append("RED per service (server side, HTTP, this run):")
    out.append(f"  {'service':<12} {'requests':>8} {'errors':>6} {'p99':>9}")
    out.extend(f"  {r['service']:<12} {r['requests']:>8} {r['errors']:>6} {r['p99_ms']:>7.0f} ms" for r in results.red)
    return "\n".join(out)


def html_report(results: Results, title: str, minutes: float, kibana_hint: str) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p>{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, {minutes:.1f} min. "
             f"Every finding below was read back from Elasticsearch.</p>"]
    for f in results.findings:
        state = "found" if f.found else "missing"
        parts.append(f"<section class='{state}'><h2>{html.escape(f.title)} <span>{'FOUND' if f.found else 'NOT FOUND'}</span></h2>"
                     f"<p class='staged'>Staged: {html.escape(f.expected)}</p><p><b>{html.escape(f.headline)}</b></p>")
        if f.waterfall:
            parts.append(html_waterfall(f.waterfall))
        if f.segments:
            parts.append(_html_segments(f.segments))
        parts.extend(f"<p>{html.escape(line)}</p>" for line in f.details)
        if f.flame_graph:
            parts.append(f"<h3>{html.escape(f.flame_title)}</h3><div class='flame'>{f.flame_graph}</div>")
        parts.append("</section>")
    parts.append("<section><h2>Inside TLS</h2><p>HTTP read in plaintext from OpenSSL in the processes (uprobes), TLS records at the NICs; "
                 "spans with <code>tls: true</code>:</p><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in results.tls or ["nothing seen"])
                 + "</ul></section>")
    parts.append("<section><h2>RED per service</h2><table><tr><th>service</th><th>requests</th><th>errors</th><th>p99</th></tr>")
    parts.extend(f"<tr><td>{html.escape(r['service'])}</td><td>{r['requests']}</td><td>{r['errors']}</td><td>{r['p99_ms']:.0f} ms</td></tr>"
                 for r in results.red)
    parts.append("</table><h3>p99 latency per window</h3>" + _svg_chart(results.p99_series) + "</section>")
    parts.append(f"<p class='hint'>{html.escape(kibana_hint)}</p></body></html>")
    return "".join(parts)


def _html_segments(segments: dict[str, int]) -> str:
    total = max(sum(segments.values()), 1)
    cells = "".join(f"<div class='seg s{i}' style='width:{max(v / total * 100, 0.5):.2f}%' title='{n}: {v / 1e6:.2f} ms'></div>"
                    for i, (n, v) in enumerate(segments.items()))
    legend = ", ".join(f"<span class='k s{i}'></span>{html.escape(n.removesuffix('_ns').replace('_', ' '))} {v / 1e6:.2f} ms"
                       for i, (n, v) in enumerate(segments.items()))
    return f"<p>Four-point breakdown:</p><div class='segments'>{cells}</div><p class='legend'>{legend}</p>"


_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")


def _svg_chart(series: dict[str, list[tuple[int, float]]], width: int = 720, height: int = 260) -> str:
    points = [p for s in series.values() for p in s]
    if not points:
        return "<p>No RED windows in this run.</p>"
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y1 = max(p[1] for p in points) * 1.1 or 1.0
    pad = 50

    def xy(p: tuple[int, float]) -> str:
        x = pad + (p[0] - x0) / max(x1 - x0, 1) * (width - 2 * pad)
        return f"{x:.1f},{height - pad - p[1] / y1 * (height - 2 * pad):.1f}"

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height + 20 * len(series)}' role='img'>",
           f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' stroke='#999'/>",
           f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{height - pad}' stroke='#999'/>",
           f"<text x='4' y='{pad}' font-size='11'>{y1:.0f} ms</text><text x='4' y='{height - pad}' font-size='11'>0</text>",
           f"<text x='{width - pad}' y='{height - pad + 16}' font-size='11' text-anchor='end'>window start, {(x1 - x0) / 1000:.0f} s shown</text>"]
    for i, (name, pts) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        out.append(f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{' '.join(xy(p) for p in pts)}'/>")
        out.extend(f"<circle cx='{xy(p).split(',')[0]}' cy='{xy(p).split(',')[1]}' r='3' fill='{colour}'/>" for p in pts)
        out.append(f"<text x='{pad}' y='{height + 20 * i}' font-size='12' fill='{colour}'>&#9632; {html.escape(name)}</text>")
    out.append("</svg>")
    return "".join(out)


def _ms(value: Any) -> int:
    return value if isinstance(value, int) else iso_to_ns(value) // 1_000_000
