"""Benchmark: what the stream jobs' guard and data-only state cost on the hot path, on one core.

Socket data events (benchmarks.core_pipeline.timed_events: keep-alive HTTP, Redis, DNS on 200 sockets)
through the flow stages, in alternating rounds of the same run:

- baseline: the stage method alone, the live object kept in a dict (the jobs before the guard);
- guarded: streams.edge.flow_record (a snapshot of the flow's state before each record, put back on an
  exception), as the Faust job runs it;
- guarded + stored: the same, then the flow's state encoded to bytes after each record, as the Flink job
  keeps it in keyed state (decoded only when a worker's cache misses);
- pickled: the baseline plus a pickle of the flow after each record, for scale (what a per-record pickle
  of the former state format cost).

Then the keyed stages after the flow stage (KeyedPipeline, about --trace-spans spans waiting their trace
gap, advanced after every batch of 50 as a job does): every key's stage encoded and decoded as the Faust
job's tables hold them (encode_keyed), against pickle + zlib of the whole (the former format), in the same run.

    .venv/bin/python benchmarks/stage_state.py --events 100000 --rounds 3
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.core_pipeline import timed_events  # noqa: E402
from streams.edge import decode_keyed, encode_flow, encode_keyed, flow_record  # noqa: E402
from tracetap.pipeline import KeyedPipeline  # noqa: E402
from tracetap.stages import FlowStage, StageConfig  # noqa: E402

CONFIG = StageConfig()
T0 = 1_800_000_000_000_000_000


def baseline(events: list) -> int:
    flows: dict[str, FlowStage] = {}
    spans = 0
    for key, record in events:
        stage = flows.get(key) or flows.setdefault(key, FlowStage(CONFIG))
        spans += len(stage.socket_data(record))
    return spans


def guarded(events: list) -> int:
    flows: dict[str, FlowStage] = {}
    spans = 0
    for key, record in events:
        stage = flows.get(key) or FlowStage(CONFIG)
        stage, out, _ = flow_record(stage, "socket_data", record, CONFIG)
        flows[key] = stage
        spans += len(out)
    return spans


def guarded_stored(events: list) -> int:
    flows: dict[str, tuple[bytes, FlowStage]] = {}
    spans = 0
    for key, record in events:
        held = flows.get(key)
        stage = held[1] if held else FlowStage(CONFIG)
        stage, out, _ = flow_record(stage, "socket_data", record, CONFIG)
        flows[key] = (encode_flow(stage), stage)
        spans += len(out)
    return spans


def pickled(events: list) -> int:
    flows: dict[str, tuple[bytes, FlowStage]] = {}
    spans = 0
    for key, record in events:
        held = flows.get(key)
        stage = held[1] if held else FlowStage(CONFIG)
        spans += len(stage.socket_data(record))
        flows[key] = (pickle.dumps(stage, protocol=pickle.HIGHEST_PROTOCOL), stage)
    return spans


def spans_of(events: list) -> list:
    flows: dict[str, FlowStage] = {}
    spans = []
    for key, record in events:
        stage = flows.get(key) or flows.setdefault(key, FlowStage(CONFIG))
        spans += stage.socket_data(record)
    return spans



def timed(fn, arg) -> float:
    started = time.perf_counter()
    fn(arg)
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trace-spans", type=int, default=10_000, help="about this many waiting spans in the trace stage's snapshot")
    args = ap.parse_args()
    events = timed_events(args.events, T0, spacing=1000)
    assert baseline(events) == guarded(events) == guarded_stored(events) == pickled(events)
    subjects = {"baseline (stage method only)": baseline, "guarded (Faust: snapshot per record)": guarded,
                "guarded + stored (Flink: encode per record)": guarded_stored, "pickled per record (former format)": pickled}
    rates: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(args.rounds):
        for name, fn in subjects.items():
            rates[name].append(len(events) / timed(fn, events))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    base = medians["baseline (stage method only)"]
    print(f"flow stages: {len(events):,} socket data events, {args.rounds} alternating rounds, medians")
    for name, rate in medians.items():
        print(f"  {name:50s} {rate:10,.0f} events/s  {rate / base:5.2f}x  {1e6 / rate - 1e6 / base:+6.1f} us/event")

    # Events spaced so that about --trace-spans spans wait a trace gap, advanced after every batch as a job does.
    spacing = CONFIG.trace_gap_ns // (2 * args.trace_spans) // 1000  # in units of make_events' 1 us
    spans = spans_of(timed_events(args.trace_spans * 4, T0, spacing=spacing))
    trace = KeyedPipeline(CONFIG)
    at = 0

    def batch() -> None:
        nonlocal at
        for span in spans[at:at + 50]:
            trace.span(span)
        trace.engine_watermark(spans[at].end_ns - CONFIG.max_out_of_order_ns)
        trace.advance()
        at += 50

    while at < args.trace_spans * 2:
        batch()
    def encode_keys(pipeline: KeyedPipeline) -> list[tuple[str, bytes]]:
        return [(kind, encode_keyed(stage, 0)) for kind, stages in pipeline.stages.items() for stage in stages.values()]

    def decode_keys(blobs: list[tuple[str, bytes]]) -> list:
        return [decode_keyed(kind, blob, CONFIG) for kind, blob in blobs]

    codecs = {"data-only, per key (encode_keyed / decode_keyed)": (encode_keys, decode_keys),
              "pickle + zlib (former format)": (lambda s: zlib.compress(pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL), 1),
                                                lambda b: pickle.loads(zlib.decompress(b)))}
    times: dict[str, tuple[list[float], list[float], int]] = {name: ([], [], 0) for name in codecs}
    for _ in range(args.rounds):
        for name, (encode, decode) in codecs.items():
            started = time.perf_counter()
            blob = encode(trace)
            encoded = time.perf_counter()
            decode(blob)
            times[name][0].append(encoded - started)
            times[name][1].append(time.perf_counter() - encoded)
            size = sum(len(b) for _, b in blob) if isinstance(blob, list) else len(blob)
            times[name] = (times[name][0], times[name][1], size)
    print(f"keyed stages' snapshot: {trace.waiting_spans:,} waiting spans, medians")
    for name, (enc, dec, size) in times.items():
        print(f"  {name:50s} encode {1e3 * statistics.median(enc):7.1f} ms  decode {1e3 * statistics.median(dec):7.1f} ms  "
              f"{size / 1e6:6.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
