"""Benchmark: the engine-agnostic core on one core: socket data events through parse + assemble, and
spans through the four-point join + RED windows + call-chain linking.

Input is synthetic but protocol-exact: keep-alive HTTP/1.1 (a JSON body), Redis GET/SET pipelines and
DNS over UDP, on many sockets, as SocketDataEvent records (the dicts a stream job decodes from Avro).
Baselines, in the same run, alternating: the same loops with the core call replaced by the minimum
any consumer does (build the event / read the span's key), so the ratio is the core's own cost.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import pstats
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracetap.assembly import SocketAssembler  # noqa: E402
from tracetap.metrics import RedWindows, red_key  # noqa: E402
from tracetap.model import SocketData, Span, TapSide  # noqa: E402
from tracetap.paths import PathJoiner, conversation_key  # noqa: E402
from tracetap.tracing import link_spans  # noqa: E402

HTTP_REQ = b"GET /api/orders/%d HTTP/1.1\r\nHost: orders\r\nUser-Agent: bench\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
HTTP_RESP = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 120\r\n\r\n" + b"{" + b"x" * 118 + b"}"
REDIS_REQ = b"*2\r\n$3\r\nGET\r\n$10\r\nuser:%05d\r\n"
REDIS_RESP = b"$5\r\nhello\r\n"
DNS_Q = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 0) + b"\x06orders\x03svc\x05local\x00\x00\x01\x00\x01"
DNS_R = struct.pack(">HHHHHH", 0, 0x8180, 1, 1, 0, 0) + b"\x06orders\x03svc\x05local\x00\x00\x01\x00\x01" + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00\x00\x05"


def make_events(n_events: int, sockets: int = 200) -> list[dict]:
    """Request/response pairs round-robin over sockets: 40% HTTP, 40% Redis, 20% DNS."""
    events, t, seqs = [], 1_700_000_000_000_000_000, {}
    i = 0
    while len(events) < n_events:
        sock = i % sockets
        kind = ("http", "http", "redis", "redis", "dns")[sock % 5]
        if kind == "http":
            req, resp, port, l4 = HTTP_REQ % i, HTTP_RESP, 8080, "TCP"
        elif kind == "redis":
            req, resp, port, l4 = REDIS_REQ % (i % 100000), REDIS_RESP, 6379, "TCP"
        else:
            qid = struct.pack(">H", i & 0xFFFF)
            req, resp, port, l4 = qid + DNS_Q[2:], qid + DNS_R[2:], 53, "UDP"
        s_req, s_resp = seqs.get(sock, (1000, 9000))
        for egress, payload, seq in ((True, req, s_req), (False, resp, s_resp)):
            t += 1000
            events.append({"host": "node", "start_time": t, "end_time": t + 500, "pid": 100 + sock % 7, "tid": 200 + sock, "comm": "app",
                           "fd": 5, "socket_id": 10_000 + sock, "netns_inode": 1, "direction": "EGRESS" if egress else "INGRESS",
                           "syscall": "WRITE" if egress else "READ", "bytes": len(payload), "l4_protocol": l4,
                           "local_ip": "10.0.0.1", "local_port": 30_000 + sock, "remote_ip": "10.0.0.2", "remote_port": port,
                           "role": "CLIENT", "payload": payload, "tcp_seq": seq if l4 == "TCP" else None, "syscall_trace_id": None})
        seqs[sock] = (s_req + len(req), s_resp + len(resp))
        i += 1
    return events


def timed_events(n_events: int, start_ns: int, spacing: int = 1, host: str = "synthetic") -> list[tuple[str, dict]]:
    """make_events from start_ns on, `spacing` times as far apart as make_events packs them (1 us), each with its
    flow id: records to produce to raw.socket-data, as an agent would."""
    from tracetap.flow import Endpoint, flow_id

    records = make_events(n_events)
    first = records[0]["start_time"]
    keyed = []
    for r in records:
        r.update(start_time=start_ns + (r["start_time"] - first) * spacing, end_time=start_ns + (r["end_time"] - first) * spacing,
                 cgroup_id=0, host=host)
        keyed.append((flow_id(r["l4_protocol"], Endpoint(r["local_ip"], r["local_port"]), Endpoint(r["remote_ip"], r["remote_port"])), r))
    return keyed


def assemble(events: list[dict]) -> list[Span]:
    assemblers: dict[str, SocketAssembler] = {}
    spans: list[Span] = []
    for record in events:
        event = SocketData.from_record(record)
        assembler = assemblers.get(event.socket_key)
        if assembler is None:
            assembler = assemblers[event.socket_key] = SocketAssembler()
        spans += assembler.add(event)
    return spans


def baseline_events(events: list[dict]) -> int:
    seen: dict[str, int] = {}
    for record in events:
        event = SocketData.from_record(record)
        seen[event.socket_key] = seen.get(event.socket_key, 0) + len(event.payload)
    return len(seen)


def four_points(spans: list[Span]) -> list[Span]:
    """Each client span with its c, s and s-p twins (shifted in time), as a full deployment would see."""
    out = []
    for s in spans:
        for side, shift in ((TapSide.CLIENT_NIC, 100), (TapSide.SERVER_NIC, 300), (TapSide.SERVER_PROCESS, 400)):
            out.append(dataclasses.replace(s, tap_side=side, start_ns=s.start_ns + shift, end_ns=s.end_ns - shift))
        out.append(s)
    return out


def join_and_measure(spans: list[Span]) -> int:
    joiners: dict[str, PathJoiner] = {}
    windows = RedWindows()
    paths = 0
    for s in spans:
        key = conversation_key(s)
        joiner = joiners.get(key)
        if joiner is None:
            joiner = joiners[key] = PathJoiner()
        paths += len(joiner.add(s))
        windows.add_span(s)
    windows.advance(spans[-1].end_ns + 60_000_000_000)
    for chunk in range(0, len(spans), 4000):  # link per batch, as a job links per trace window
        link_spans(spans[chunk:chunk + 4000])
    return paths


def baseline_spans(spans: list[Span]) -> int:
    keys = set()
    for s in spans:
        keys.add((s.flow_id, red_key(s)))
    return len(keys)


def timed(fn, arg) -> float:
    started = time.perf_counter()
    fn(arg)
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    events = make_events(args.events)
    spans = assemble(events)
    all_points = four_points(spans)
    print(f"core benchmark: {len(events):,} socket data events -> {len(spans):,} spans; {len(all_points):,} spans at four points")
    results: dict[str, list[float]] = {"events: baseline (decode only)": [], "events: parse + assemble": [],
                                       "spans: baseline (key only)": [], "spans: join + RED + link": []}
    for _ in range(args.rounds):
        results["events: baseline (decode only)"].append(len(events) / timed(baseline_events, events))
        results["events: parse + assemble"].append(len(events) / timed(assemble, events))
        results["spans: baseline (key only)"].append(len(all_points) / timed(baseline_spans, all_points))
        fresh = four_points(spans)
        results["spans: join + RED + link"].append(len(fresh) / timed(join_and_measure, fresh))
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, value in medians.items():
        print(f"  {name:34s} {value:12,.0f} /s")
    print(f"parse + assemble: {medians['events: parse + assemble']:,.0f} events/s per core "
          f"({medians['events: parse + assemble'] / medians['events: baseline (decode only)']:.2f}x of decode only; goal >= 50,000/s: "
          f"{'met' if medians['events: parse + assemble'] >= 50_000 else 'NOT met'})")
    print(f"join + RED + link: {medians['spans: join + RED + link']:,.0f} spans/s per core "
          f"({medians['spans: join + RED + link'] / medians['spans: baseline (key only)']:.2f}x of key only)")
    if not args.no_profile:
        profile = cProfile.Profile()
        profile.enable()
        assemble(events)
        profile.disable()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(12)
        print("\n-- cProfile of parse + assemble")
        print("\n".join(line for line in out.getvalue().splitlines()[6:24] if line.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
