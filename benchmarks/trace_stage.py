"""Benchmark: the stages after the flow stage (KeyedPipeline) as the engines drive them, an advance after every
batch of spans on the watermark the spans' own time makes (the latest end less the out-of-order bound).

Spans come from protocol-exact traffic (benchmarks.core_pipeline's events through FlowStages, made once
before timing), events 1 ms of event time apart (about 500 spans a second), so a longer trace gap means
more spans wait at each advance. What a batch costs should not grow with what waits: the figure is spans/s at a short gap
(the baseline, same run) and at a long one, and their ratio. With --baseline-tree, the same
measurement runs on another checkout too, alternating, in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spans_per_s(events: int, gap_s: float, batch: int) -> tuple[float, int]:
    """(spans/s through span + advance, the most spans waiting at an advance)."""
    from benchmarks.core_pipeline import timed_events
    from tracetap.pipeline import KeyedPipeline
    from tracetap.stages import FlowStage, StageConfig

    config = StageConfig(trace_gap_ns=int(gap_s * 1e9))
    flows: dict[str, FlowStage] = {}
    spans = []
    for key, record in timed_events(events, 1_800_000_000_000_000_000, spacing=1000):
        stage = flows.get(key) or flows.setdefault(key, FlowStage(config))
        spans += stage.socket_data(record)
    trace = KeyedPipeline(config)
    most = 0
    started = time.perf_counter()
    for i in range(0, len(spans), batch):
        for span in spans[i:i + batch]:
            trace.span(span)
        most = max(most, trace.waiting_spans)
        trace.engine_watermark(max(s.end_ns for s in spans[i:i + batch]) - config.max_out_of_order_ns)
        trace.advance()
    trace.advance(final=True)
    return len(spans) / (time.perf_counter() - started), most


def _in_tree(tree: Path, events: int, gap_s: float, batch: int) -> tuple[float, int]:
    code = (f"import sys, json; sys.path.insert(0, {str(tree)!r}); sys.path.insert(1, {str(ROOT)!r});"
            f"from benchmarks.trace_stage import spans_per_s; print(json.dumps(spans_per_s({events}, {gap_s}, {batch})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tree,
                          env=dict(os.environ, PYTHONPATH=str(tree)))
    rate, most = json.loads(done.stdout.strip().splitlines()[-1])
    return rate, most


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000, help="raw socket data events (about half as many spans)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1000, help="spans between advances")
    ap.add_argument("--short-gap-s", type=float, default=0.05, help="the baseline's trace gap")
    ap.add_argument("--long-gap-s", type=float, default=60.0)
    ap.add_argument("--baseline-tree", type=Path, help="another checkout, measured alternating with this one")
    args = ap.parse_args()
    trees = {"this tree": ROOT} | ({"baseline tree": args.baseline_tree.resolve()} if args.baseline_tree else {})
    print(f"trace stage benchmark: {args.events:,} events, advance every {args.batch} spans, load {os.getloadavg()[0]:.2f}", flush=True)
    rates: dict[tuple[str, float], list[float]] = {}
    waiting: dict[tuple[str, float], int] = {}
    for round_ in range(args.rounds):
        for name, tree in trees.items():
            for gap in (args.short_gap_s, args.long_gap_s):
                rate, most = _in_tree(tree, args.events, gap, args.batch)
                rates.setdefault((name, gap), []).append(rate)
                waiting[(name, gap)] = most
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    print(f"{'tree':<14} {'trace gap':>10} {'most waiting':>13} {'spans/s (median)':>17} {'vs short gap':>13}")
    for name in trees:
        short = statistics.median(rates[(name, args.short_gap_s)])
        for gap in (args.short_gap_s, args.long_gap_s):
            median = statistics.median(rates[(name, gap)])
            print(f"{name:<14} {gap:>9.2f}s {waiting[(name, gap)]:>13,} {median:>17,.0f} {median / short:>12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
