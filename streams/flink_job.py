"""`tracetap streams flink`: the core's keyed stages (tracetap/stages.py, tracetap/keyed.py) hosted by PyFlink.

    raw.socket-data ┐ Kafka source    lateness per   keyBy(flow id)   keyBy(conversation)    keyBy(host|pid)   (by bucket)
    raw.packets     ├ (SQL, raw    ─▶ input       ─▶ flow stage   ─▶ conversation stage ─┬▶ process stage ──▶ Kafka sink
    raw.lifecycle   ┘ bytes)          partition      (FlowStage)  │   (4-point join,    │   (call links,       (transactions)
                                                        │         │    hop trace ids)   │    SLOW_REQUEST, 502s)
    resources ── Kafka source ─▶ decode ─▶ broadcast ───┼─────────┘                     │  keyBy(series)
                                                        └── lifecycle events ───────────┴▶ series stage ───▶
                                                                                            (RED, network, DNS windows)

Every stage is keyed by something that spreads as the traffic grows, so every operator runs at the job's
parallelism. Flink keys each operator by a bucket of the stage's keys, one bucket per key group (`_Buckets`
says why). The same stage objects as the Faust job, in Flink keyed state as bytes of streams/edge.py's
data-only encoding (never pickled), advanced on a processing-time tick per bucket at the watermark of the
moment (the keys whose next deadline it passed: a request timeout, a hop complete, a window to close), and
finally at the end of input (`_Buckets.schedule` says why not an event-time timer per deadline). Workload tags reach the conversation
and series stages as broadcast state. Undecodable and late records, and records the core raises on, go to
the dead-letter topic with the reason, as in the Faust job. With checkpointing on (the default), outputs
are written in Kafka transactions committed at each checkpoint: consumers that read with
isolation.level=read_committed see every record exactly once, a checkpoint interval later.
"""

from __future__ import annotations

import logging
import sys
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from schemas.catalog import DEAD_LETTER, RESOURCES
from schemas.deadletter import dead_letter_key, dead_letter_record
from schemas.kafka import java_properties
from streams.host import OUTPUTS, RAW_INPUTS, log_registry_wait, raw_kinds, registry_waits
from tracetap.config import Settings
from tracetap.errors import TracetapError, UndecodableState
from tracetap.keyed import CONVERSATION, PROCESS, SERIES
from tracetap.stages import FlowStage, StageConfig

log = logging.getLogger("tracetap.streams.flink")

COMPONENT = "tracetap streams flink"
MAX_WATERMARK_MS = 2**63 - 1  # Flink's end-of-input watermark
MAX_NS = 2**63 - 1
_MS = 1_000_000
_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class FlinkOptions:
    app_id: str = "tracetap-streams-flink"  # consumer group, transactional-id prefix and checkpoint folder
    parallelism: int = 2
    target: str = "local"  # local: a mini-cluster in this process; remote: submit to --jobmanager
    jobmanager: str | None = None  # host:port of a session cluster's REST endpoint, with target=remote
    checkpoint_interval_s: float = 10.0  # 0: no checkpoints (then at-least-once, not transactional)
    checkpoint_dir: Path | None = None  # None: the cluster's state.checkpoints.dir (the CLI's local default: <state>/flink/<app_id>/checkpoints)
    from_checkpoint: Path | None = None  # a chk-N folder (or its _metadata) to restore from
    bounded: bool = False  # stop at the offsets that were the latest at start (replays, tests, benchmarks)
    source_idle_timeout_s: float = 60.0  # a partition without records this long stops holding the watermark back (README: why not less)
    idle_flush_s: float = 10.0  # no input for this long (processing time): emit what waits for the watermark
    restart_attempts: int = 3
    bundle_size: int = 100_000  # records a Python operator takes before it ends a bundle (and commits its state)
    bundle_time_s: float = 1.0  # ... or this long
    watermark_interval_s: float = 1.0  # how often the sources emit a watermark (each one ends the bundles it passes)
    profile: bool = False  # cProfile of the Python workers, printed into Flink's log (python.profile.enabled)
    stages: StageConfig = field(default_factory=StageConfig)


MAX_PARALLELISM = 128  # the job's max parallelism (Flink's key groups), and so its number of buckets of keys
_SNAPSHOT_EVERY = 2000  # log entries of a bucket between two snapshots of it
# a bucket's log: an item, an advance of the due keys, a final advance of all, an idle flush (the flow stage's)
_LOG_ITEMS, _LOG_ADVANCE, _LOG_FINAL, _LOG_IDLE = b"i", b"a", b"f", b"l"
_TICK, _END_OF_INPUT = "tick", "end of input"  # a bucket's two timers
_TICKS_AHEAD = 3  # processing-time ticks a bucket keeps set (`_Buckets.schedule`)
_NO_MARKER_FLUSHES = 2  # the process and series stages' idle flush without the conversation stage's marker (`_keyed_function`)
_SNAPSHOT_MARK, _ENTRY_MARK = b"S", b"#"  # a snapshot and a log entry that start with their sequence number


def _types() -> tuple[Any, Any]:
    """The output rows (topic, key, value), and the bytes of streams/edge.py's encoding, which hold every stage's
    state (not Flink's pickled bytes type: nothing is pickled)."""
    from pyflink.common import Types

    row = Types.ROW_NAMED(["t", "k", "v"], [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE())])
    return row, Types.PRIMITIVE_ARRAY(Types.BYTE())


def _routed_type() -> Any:
    """What goes from one stage to the next: the next stage's key, and the item (streams/edge.py's encode_routed)."""
    from pyflink.common import Types

    return Types.ROW_NAMED(["key", "v"], [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())])


def _resource_state() -> Any:
    """The broadcast state of workload tags: resource id -> the tag's JSON."""
    from pyflink.common import Types
    from pyflink.datastream.state import MapStateDescriptor

    return MapStateDescriptor("workload-tags", Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()))


# the Python functions (run in Flink's Python workers) ------------------------------------------------
class _Codec:
    """Avro through the registry, built in each worker's `open` (the functions travel pickled)."""

    def __init__(self, settings: Settings) -> None:
        from schemas.registry import SchemaRegistry
        from schemas.serde import AvroDeserializer, AvroSerializer

        prefix = settings.topics.prefix
        registry = SchemaRegistry(settings.registry)
        self.decode = AvroDeserializer(registry)
        self.topics = {spec.name: spec.full_name(prefix) for spec in OUTPUTS}
        self.encoders = {spec.name: AvroSerializer(registry, spec.value_subject(prefix), spec.schema(),
                                                   auto_register=settings.registry.auto_register) for spec in OUTPUTS}

    def decoded(self, value: bytes | None) -> dict[str, Any]:
        """The record; UndecodableRecord to dead-letter; a registry outage is waited out (backpressure)."""
        from schemas.registry import RegistryUnavailable

        for delay in registry_waits():
            try:
                return self.decode(value)
            except RegistryUnavailable as exc:
                log_registry_wait(delay, exc)
                time.sleep(delay)
        raise AssertionError("the waits do not end")

    def row(self, spec_name: str, key: str, record: dict[str, Any]) -> Any:
        from pyflink.common import Row

        return Row(self.topics[spec_name], key.encode(), self.encoders[spec_name](record))

    def dead_letter(self, row: Any, reason: str, detail: str, failure: Any = None) -> Any:
        timestamp_ms = row.ts.to_epoch_milli() if row.ts is not None else None
        record = dead_letter_record(COMPONENT, reason, detail, row.topic, row.partition, row.offset, timestamp_ms, row.k, row.v,
                                    None, failure and failure.exception_type, failure and failure.frame)
        return self.row(DEAD_LETTER.name, dead_letter_key(record), record)

    def dead_letter_of(self, reason: str, detail: str, key: bytes | None, value: bytes | None, failure: Any = None) -> Any:
        """A dead letter without a source record (a timer's failure, an item between operators)."""
        record = dead_letter_record(COMPONENT, reason, detail, None, None, None, None, key, value, None,
                                    failure and failure.exception_type, failure and failure.frame)
        return self.row(DEAD_LETTER.name, dead_letter_key(record), record)


def _flow_function(settings: Settings, options: FlinkOptions, routes: dict[str, Any]) -> Any:
    from pyflink.datastream import KeyedProcessFunction, OutputTag

    from schemas.serde import UndecodableRecord
    from streams.edge import FLOW, call_core, flow_record
    from tracetap.keyed import conversation_of, lifecycle_routes

    row_type, _ = _types()
    prefix = settings.topics.prefix
    kinds = raw_kinds(prefix)
    stages = options.stages
    flush_horizon_ns = stages.flush_horizon_ns

    class FlowFunction(_Buckets, KeyedProcessFunction):
        """Stage 1, per flow id, in buckets of flows (`_Buckets`): each flow's FlowStage, advanced on the bucket's
        ticks once the watermark passes its next deadline (rounded up to a whole second, so that a busy flow is
        not advanced on every tick), flushed after idle_flush_s without input."""

        kind = FLOW

        def open(self, runtime_context: Any) -> None:
            self.open_buckets(runtime_context, settings, options)
            metrics = runtime_context.get_metrics_group()
            self.consumed = {kind: metrics.counter(f"consumed_{kind}") for kind in set(kinds.values())}
            self.dead_letters = metrics.counter("dead_letters")
            self.stage_errors = metrics.counter("stage_errors")  # records the core raised on or refused (dead-lettered too)
            self.max_seen_ns = 0
            self.woken = False

        def deadline_ns(self, stage: FlowStage) -> int | None:
            due = stage.next_deadline_ns()
            return None if due is None else -(-due // _S) * _S

        def wake(self) -> Iterator[Any]:
            """Once after a start or restart: a row to every bucket of the conversation, process and series
            stages. A restored bucket whose input had all come before the checkpoint may have no tick in it
            (see `_Buckets.schedule`); woken, it loads and ticks again."""
            if self.woken:
                return
            self.woken = True
            for row in _wake_rows():
                yield row
                yield routes[PROCESS], row
                yield routes[SERIES], row

        def process_element(self, row: Any, ctx: Any) -> Iterator[Any]:
            yield from self.wake()
            self.last_input = time.monotonic()
            kind = kinds[row.topic]
            self.consumed[kind].inc()
            try:
                record = self.codec.decoded(row.v)
            except UndecodableRecord as exc:
                self.dead_letters.inc()
                yield DEAD_LETTERS, self.codec.dead_letter(row, exc.reason, exc.detail)
                return
            bucket, dead = self.bucket(ctx)
            if dead is not None:
                yield DEAD_LETTERS, dead
            key = (row.k or b"").decode(errors="replace")
            time_ns, failure = call_core(FlowStage.event_time_ns, kind, record)
            if failure is None:
                self.max_seen_ns = max(self.max_seen_ns, time_ns)
                spans, failure = self.apply(bucket, key, (kind, record), 0)
            if failure is not None:  # the flow's stage is as it was before the record
                self.dead_letters.inc()
                self.stage_errors.inc()
                _log_once(failure.reason, failure.detail)
                yield DEAD_LETTERS, self.codec.dead_letter(row, failure.reason, failure.detail, failure)
                return
            for span in spans:
                yield _routed_row(conversation_of(span), ("span", span))
            if kind == "lifecycle":
                for route in lifecycle_routes(record):
                    yield routes[route.to], _routed_row(route.key, route.item)
            self.logged(bucket, _LOG_ITEMS, 0, key, kind.encode() + b"\0" + row.v)
            self.schedule(bucket, ctx)

        def apply(self, bucket: _Bucket, key: str, item: tuple[str, dict[str, Any]], watermark_ns: int) -> tuple[Any, Any]:
            stage = bucket.stages.get(key) or FlowStage(stages)
            stage, spans, failure = flow_record(stage, item[0], item[1], stages)
            if failure is None or key in bucket.stages:
                bucket.put(key, stage, self.deadline_ns(stage))
            return spans, failure

        def replayed_item(self, body: bytes) -> tuple[str, dict[str, Any]]:
            kind, _, value = body.partition(b"\0")
            return kind.decode(), self.codec.decoded(value)

        def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
            yield from self.wake()
            bucket, dead = self.bucket(ctx)
            if dead is not None:
                yield DEAD_LETTERS, dead
            tag, watermark_ns = _LOG_ADVANCE, _watermark_ns(ctx)
            if self.timer_kind(bucket, ctx, timestamp) == _TICK and self.idle(bucket, options.idle_flush_s):
                # the idle flush: with no input for idle_flush_s, as the Faust job's
                tag, watermark_ns = _LOG_IDLE, min(self.max_seen_ns + flush_horizon_ns, MAX_NS)
            yield from self.advance_bucket(bucket, ctx, tag, watermark_ns)

        def advance(self, key: str, stage: FlowStage, tag: bytes, watermark_ns: int) -> tuple[Any, Any]:
            if tag == _LOG_IDLE:  # beyond the latest event of the worker and of the flow, as the Faust job's idle flush
                watermark_ns = max(watermark_ns, stage.latest_event_ns + flush_horizon_ns)
            return call_core(stage.advance, watermark_ns)

        def emit(self, key: str, due: list[Any]) -> Iterator[Any]:
            for span in due:
                yield _routed_row(conversation_of(span), ("span", span))

        def failed(self, key: str, failure: Any, blob: bytes) -> Iterator[Any]:
            self.stage_errors.inc()
            yield DEAD_LETTERS, self.codec.dead_letter_of(failure.reason, f"advance: {failure.detail}", key.encode(), blob, failure)

        def undecodable(self, ctx: Any, exc: UndecodableState, blob: bytes) -> Any:
            self.dead_letters.inc()
            return self.codec.dead_letter_of("UNDECODABLE_STATE", str(exc), str(ctx.get_current_key()).encode(), blob)

    DEAD_LETTERS = OutputTag("dead-letters", row_type)
    return FlowFunction(), DEAD_LETTERS


_logged: set[str] = set()


def _log_once(reason: str, detail: str) -> None:
    """Once per kind of failure and worker, not once per record."""
    if reason not in _logged:
        _logged.add(reason)
        log.warning("dead-lettering records reason=%s first_detail=%r", reason, detail)


def _late_filter(settings: Settings, options: FlinkOptions) -> Any:
    from pyflink.datastream import OutputTag, ProcessFunction

    from tracetap.eventtime import PartitionClocks

    row_type, _ = _types()
    stages = options.stages

    class LateFilter(ProcessFunction):
        """Lateness is judged per input partition, against the record's own partition, as the Faust job does: this
        runs forward from the source, so each instance sees every record of its partitions in order. (Flink's own
        watermark, which the timers follow, is emitted periodically and so lags a fast replay by a varying amount:
        judged against it, the same input would be late in one run and on time in the next.) The record's Kafka
        timestamp is its event time (the agents set it). After a restore the clocks start again from the
        partitions' next records."""

        def open(self, runtime_context: Any) -> None:
            self.codec = _Codec(settings)
            self.clocks = PartitionClocks(stages.max_out_of_order_ns, stages.allowed_lateness_ns)
            self.late = runtime_context.get_metrics_group().counter("late_records")
            self.first_input_s: float | None = None

        def process_element(self, row: Any, ctx: Any) -> Iterator[Any]:
            if self.first_input_s is None:  # logged at once: a line written in close() never reaches Flink's log
                self.first_input_s = time.time()
                log.info("first input app_id=%s first_input_unix_s=%.3f", options.app_id, self.first_input_s)
            if row.ts is None or self.clocks.observe(f"{row.topic}/{row.partition}", row.ts.to_epoch_milli() * _MS):
                yield row
                return
            self.late.inc()
            yield DEAD_LETTERS, self.codec.dead_letter(row, "LATE", f"event time {row.ts.to_epoch_milli()} ms is before its partition's "
                                                       "watermark minus the allowed lateness")

    DEAD_LETTERS = OutputTag("late-records", row_type)
    return LateFilter(), DEAD_LETTERS


def _resource_function(settings: Settings) -> Any:
    from pyflink.datastream import OutputTag, ProcessFunction

    from schemas.serde import UndecodableRecord

    row_type, _ = _types()

    class ResourceFunction(ProcessFunction):
        """Workload tags, as (resource id, the tag's JSON) for the stages' broadcast state; a tombstone removes one."""

        def open(self, runtime_context: Any) -> None:
            self.codec = _Codec(settings)

        def process_element(self, row: Any, ctx: Any) -> Iterator[Any]:
            import orjson
            from pyflink.common import Row

            resource_id = (row.k or b"").decode(errors="replace")
            if row.v is None:
                yield Row(resource_id, None)
                return
            try:
                record = self.codec.decoded(row.v)
            except UndecodableRecord as exc:
                yield DEAD_LETTERS, self.codec.dead_letter(row, exc.reason, exc.detail)
                return
            yield Row(record["resource_id"], orjson.dumps(record))

    DEAD_LETTERS = OutputTag("resource-dead-letters", row_type)
    return ResourceFunction(), DEAD_LETTERS


def _keyed_function(kind: str, settings: Settings, options: FlinkOptions, routes: dict[str, Any]) -> Any:
    """Stage 2, 3 or 4 (`kind`: conversation, process or series; tracetap/keyed.py), one stage per key, in
    buckets of keys (`_Buckets`), advanced on the bucket's ticks once the watermark passes a stage's next
    deadline. Outputs for topics leave as rows; items for a later stage leave by the side output `routes` names
    for it. The conversation and series stages read workload tags from the broadcast resources (`_Workloads`).

    The idle flush (input stopped, so the watermark did too) goes down the stages in order. The conversation
    stage flushes after twice idle_flush_s without input (the flow stage, which feeds it at once, flushes after
    idle_flush_s). The process and series stages wait for the conversation stage, not for a time: its spans
    reach them a join window behind their input, so their own last input can be long before its flush, and a
    process flushed first sent its calls without the server span still held upstream (a missing parent link).
    A conversation worker whose every bucket has flushed sends a marker row to every bucket of both (on the
    same channels as its items, so after them), and they flush once the last thing they received is such a
    marker, `_Settled`'s delay later (for the other conversation workers). Without one they flush after
    `_NO_MARKER_FLUSHES` times the conversation stage's wait."""
    from pyflink.datastream import KeyedBroadcastProcessFunction, KeyedProcessFunction

    from streams.edge import call_core, decode_routed
    from tracetap.keyed import ConversationStage, ProcessStage, SeriesStage, advance_stage, apply_item

    stages = options.stages
    make = {CONVERSATION: ConversationStage, PROCESS: ProcessStage, SERIES: SeriesStage}[kind]
    uses_workloads = kind != PROCESS

    class _Keyed(_Buckets):
        def open(self, runtime_context: Any) -> None:
            self.open_buckets(runtime_context, settings, options)
            metrics = runtime_context.get_metrics_group()
            self.late = metrics.counter("late")
            self.produced = metrics.counter("produced")
            self.stage_errors = metrics.counter("stage_errors")
            self.workloads = _Workloads()
            self.last_output_s: float | None = None
            self.late_seen = 0
            self.dropped_seen = 0
            self.last_final_log_s = 0.0
            self.settled = _Settled(2 * (options.watermark_interval_s + options.bundle_time_s))
            self.markers_sent = False  # conversation: the markers of this quiet spell are sent
            self.flush_logged = False  # the idle flush of this quiet spell is in the log
            self.upstream_flushed: float | None = None  # process, series: when the latest marker came

        def deadline_ns(self, stage: Any) -> int | None:
            return stage.next_deadline_ns

        def _element(self, row: Any, ctx: Any) -> Iterator[Any]:
            if row.key in _WAKE or row.key in _FLUSHED:  # woken after a restart, or the conversation stage flushed
                bucket, dead = self.bucket(ctx)
                if dead is not None:
                    yield dead
                if row.key in _FLUSHED:
                    self.upstream_flushed = time.monotonic()
                self.schedule(bucket, ctx)
                return
            self.last_input = time.monotonic()
            self.markers_sent = self.flush_logged = False
            if uses_workloads:
                self.workloads.load(ctx)
            bucket, dead = self.bucket(ctx)
            if dead is not None:
                yield dead
            try:
                item = decode_routed(row.v)
            except UndecodableState as exc:  # from this job's own operators: a bug, kept for a look
                self.stage_errors.inc()
                _log_once("UNDECODABLE_STATE", str(exc))
                yield self.codec.dead_letter_of("UNDECODABLE_STATE", str(exc), row.key.encode(), row.v)
                return
            watermark_ns = self.settled.watermark_ns(ctx)
            on_time, failure = self.apply(bucket, row.key, item, watermark_ns)
            if failure is not None:  # the stage methods check before they change anything: the stage is as it was
                self.stage_errors.inc()
                _log_once(failure.reason, failure.detail)
                yield self.codec.dead_letter_of(failure.reason, failure.detail, row.key.encode(), row.v, failure)
                return
            if on_time is False:
                self.late.inc()
                self.late_seen += 1
                if self.late_seen <= 3 or self.late_seen % 1000 == 0:  # dropped, so said: the first ones, then every thousandth
                    log.warning("late in the %s stage, dropped count=%d key=%s item=%s event_ns=%s watermark_ns=%d flink_watermark_ns=%d",
                                kind, self.late_seen, row.key, item[0], _item_time(item), watermark_ns, _watermark_ns(ctx))
            self.logged(bucket, _LOG_ITEMS, watermark_ns, row.key, row.v)
            self.schedule(bucket, ctx)

        def apply(self, bucket: _Bucket, key: str, item: tuple[Any, ...], watermark_ns: int) -> tuple[Any, Any]:
            stage = bucket.stages.get(key) or make(stages)
            before = (stage.counters.duplicate_spans, stage.counters.duplicate_lifecycle, stage.counters.late_in_windows)
            result = call_core(apply_item, kind, stage, key, item, watermark_ns, self.workloads.index)
            after = (stage.counters.duplicate_spans, stage.counters.duplicate_lifecycle, stage.counters.late_in_windows)
            if after != before:  # dropped without a dead letter (a replayed duplicate, a window closed): said in the log
                self.dropped_seen += 1
                if self.dropped_seen <= 3 or self.dropped_seen % 1000 == 0:
                    log.warning("dropped in the %s stage count=%d key=%s item=%s event_ns=%s watermark_ns=%d duplicate=%s window_closed=%s",
                                kind, self.dropped_seen, key, item[0], _item_time(item), watermark_ns,
                                after[0] + after[1] > before[0] + before[1], after[2] > before[2])
            if result[1] is None or key in bucket.stages:
                bucket.put(key, stage, stage.next_deadline_ns)
            return result

        def replayed_item(self, body: bytes) -> tuple[Any, ...]:
            return decode_routed(body)

        def _timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
            bucket, dead = self.bucket(ctx)
            if dead is not None:
                yield dead
            idle = False
            if self.timer_kind(bucket, ctx, timestamp) == _END_OF_INPUT:  # the stages before this one emitted all they hold before
                final = ctx.timer_service().current_watermark() == MAX_WATERMARK_MS  # the last watermark left them
                watermark_ns = _watermark_ns(ctx)
            else:  # the idle flush, once the stages before this one have flushed theirs
                after_s = self.idle_after_s()
                final = idle = self.idle(bucket, after_s)
                watermark_ns = self.settled.watermark_ns(ctx)
                if idle and not self.flush_logged:
                    self.flush_logged = True
                    log.info("idle flush stage=%s after=%s", kind, "the conversation stage's markers" if after_s == 0
                             else f"{after_s:.0f} s without input")
            yield from self.advance_bucket(bucket, ctx, _LOG_FINAL if final else _LOG_ADVANCE, watermark_ns)
            if idle and kind == CONVERSATION and not self.markers_sent and all(b.idle_flushed or not b.stages for b in self.buckets.values()):
                self.markers_sent = True  # this worker's last bucket flushed: the process and series stages may
                log.info("idle flush done stage=%s buckets=%d: markers to the process and series stages", kind, len(self.buckets))
                for row in _flushed_rows():
                    yield routes[PROCESS], row
                    yield routes[SERIES], row

        def idle_after_s(self) -> float:
            """How long without input before the idle flush (see the docstring above)."""
            wait = 2 * options.idle_flush_s + 1
            if kind == CONVERSATION:
                return wait
            flushed, last = self.upstream_flushed, self.last_input
            if flushed is not None and (last is None or flushed >= last) and time.monotonic() - flushed >= self.settled.delay_s:
                return 0.0
            return _NO_MARKER_FLUSHES * wait

        def advance(self, key: str, stage: Any, tag: bytes, watermark_ns: int) -> tuple[Any, Any]:
            return call_core(advance_stage, kind, stage, watermark_ns, self.workloads.index, tag == _LOG_FINAL)

        def emit(self, key: str, routed: list[Any]) -> Iterator[Any]:
            for route in routed:
                tag = routes.get(route.to)
                if tag is not None:
                    yield tag, _routed_row(route.key, route.item)
                else:
                    self.produced.inc()
                    yield self.codec.row(route.to, route.key, route.item)
            if routed:
                self.last_output_s = time.time()
                if self.last_output_s - self.last_final_log_s >= 0.1:  # a line a tenth of a second at most
                    self.last_final_log_s = self.last_output_s
                    log.info("advance app_id=%s last_output_unix_s=%.3f", options.app_id, self.last_output_s)

        def failed(self, key: str, failure: Any, blob: bytes) -> Iterator[Any]:
            self.stage_errors.inc()
            yield self.codec.dead_letter_of(failure.reason, f"advance: {failure.detail}", key.encode(), blob, failure)

        def undecodable(self, ctx: Any, exc: UndecodableState, blob: bytes) -> Any:
            self.stage_errors.inc()
            return self.codec.dead_letter_of("UNDECODABLE_STATE", str(exc), str(ctx.get_current_key()).encode(), blob)

    _Keyed.kind = kind
    if uses_workloads:
        class BroadcastStage(_Keyed, KeyedBroadcastProcessFunction):
            def process_element(self, row: Any, ctx: Any) -> Iterator[Any]:
                yield from self._element(row, ctx)

            def process_broadcast_element(self, row: Any, ctx: Any) -> None:
                self.workloads.apply(row, ctx)

            def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
                self.workloads.load(ctx)
                yield from self._timer(timestamp, ctx)

        return BroadcastStage()

    class KeyedStage(_Keyed, KeyedProcessFunction):
        def process_element(self, row: Any, ctx: Any) -> Iterator[Any]:
            yield from self._element(row, ctx)

        def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
            yield from self._timer(timestamp, ctx)

    return KeyedStage()


def _item_time(item: tuple[Any, ...]) -> int | None:
    """When a routed item happened (a span's end, a lifecycle event's time), for the log."""
    body = item[1] if len(item) > 1 else None
    return getattr(body, "end_ns", None) if not isinstance(body, dict) else body.get("time")


class _Bucket:
    """The live stages of one bucket's keys in a worker, with each one's next deadline, which of the bucket's
    timers are set, whether its idle flush is done, and how many entries its log holds since its snapshot."""

    __slots__ = ("stages", "deadlines", "tick_at", "fired_ms", "end_timer", "idle_flushed", "log_size", "seq")

    def __init__(self, stages: dict[str, Any]) -> None:
        self.stages = stages
        self.deadlines: dict[str, int] = {}  # key -> its stage's next deadline (ns), for the keys that have one
        self.tick_at: int | None = None  # the furthest tick set (ms; a cache: Flink holds the timers), None: none pending
        self.fired_ms: int | None = None  # the tick being handled
        self.end_timer = False  # its event-time timer at the end of input is set
        self.idle_flushed = False  # flushed since its last input
        self.log_size = 0
        self.seq = 0  # the sequence number of its last log entry (a snapshot counts as one)

    def put(self, key: str, stage: Any, deadline_ns: int | None) -> None:
        self.stages[key] = stage
        if deadline_ns is None:
            self.deadlines.pop(key, None)
        else:
            self.deadlines[key] = deadline_ns

    def drop(self, key: str) -> None:
        self.stages.pop(key, None)
        self.deadlines.pop(key, None)

    def due(self, tag: bytes, watermark_ns: int) -> list[str]:
        """The keys an advance of this kind at this watermark runs: all of them for a final or idle one."""
        if tag != _LOG_ADVANCE:
            return list(self.stages)
        return [key for key, due in self.deadlines.items() if due <= watermark_ns]


class _Buckets:
    """Keyed state by bucket of keys, for every stage of the job.

    Flink keys these operators by bucket (`bucket_of`: one bucket per key group), and each bucket holds the
    stages of its keys (flows, conversations, processes, series). Keyed by the stage's own key, PyFlink's
    process mode made one synchronous state round trip to the JVM per touched key and state at the end of
    every bundle: at parallelism 1 a replay of 20,092 events had not finished after 600 s. By bucket, a
    bundle commits at most one snapshot and one log per bucket. The buckets still spread over every
    parallelism up to the job's max parallelism (`MAX_PARALLELISM`), and rescale with Flink's key groups.

    A bucket's state is a snapshot of its stages (streams/edge.py's encode_bucket) and the log of what
    happened since (each item with its key, each advance with its watermark), snapshotted again every
    `_SNAPSHOT_EVERY` entries. A worker keeps its buckets' stages live; after a restore it replays a bucket's
    log onto its snapshot on the bucket's first input, and is exactly where the checkpoint was: an advance
    runs the keys whose deadline the watermark passed, which the replay finds the same way.

    A subclass names its `kind` and gives `deadline_ns`, `apply`, `replayed_item`, `advance`, `emit`, `failed`
    and `undecodable`."""

    kind: str

    def open_buckets(self, runtime_context: Any, settings: Settings, options: FlinkOptions) -> None:
        from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

        _, bytes_type = _types()
        self.codec = _Codec(settings)
        self.options = options
        self.snapshot = runtime_context.get_state(ValueStateDescriptor(f"{self.kind}-bucket", bytes_type))
        self.log = runtime_context.get_list_state(ListStateDescriptor(f"{self.kind}-bucket-log", bytes_type))
        self.buckets: dict[int, _Bucket] = {}
        self.opened = time.monotonic()
        self.last_input: float | None = None  # none yet since this worker opened (a start, a restart, a restore)

    def bucket(self, ctx: Any) -> tuple[_Bucket, Any]:
        """The current key's bucket, restored on first use in this worker; and a dead letter when its snapshot is
        not the stages' encoding (the bucket then starts again)."""
        number = ctx.get_current_key()
        bucket = self.buckets.get(number)
        if bucket is not None:
            return bucket, None
        from streams.edge import decode_bucket

        dead = None
        blob = self.snapshot.value()
        stages: dict[str, Any] = {}
        bucket = self.buckets[number] = _Bucket({})
        if blob is not None:
            if blob[:1] == _SNAPSHOT_MARK:  # the sequence number of the last log entry it holds, then the stages
                bucket.seq, blob = int.from_bytes(blob[1:9], "big"), blob[9:]
            try:
                stages = decode_bucket(self.kind, blob, self.options.stages)
            except UndecodableState as exc:
                _log_once("UNDECODABLE_STATE", str(exc))
                log.error("a %s bucket's state is not its encoding; its keys start again bucket=%s error=%s", self.kind, number, exc)
                dead = self.undecodable(ctx, exc, blob)
        for key, stage in stages.items():
            bucket.put(key, stage, self.deadline_ns(stage))
        held = bucket.seq
        stale = 0
        for entry in self.log.get() or ():
            bucket.log_size += 1
            if entry[:1] == _ENTRY_MARK:
                seq, entry = int.from_bytes(entry[1:9], "big"), entry[9:]
                if seq <= held:  # already in the snapshot: the log was not emptied when it was taken
                    stale += 1
                    continue
                bucket.seq = max(bucket.seq, seq)
            self._replay(bucket, entry)
        if blob is not None or bucket.log_size:
            log.info("restored a %s bucket bucket=%s keys=%d log_entries=%d seq=%d", self.kind, number, len(stages), bucket.log_size, bucket.seq)
        if stale:
            log.warning("a %s bucket's log held entries its snapshot already has; skipped bucket=%s entries=%d snapshot_seq=%d",
                        self.kind, number, stale, held)
        return bucket, dead

    def _replay(self, bucket: _Bucket, entry: bytes) -> None:
        tag, watermark_ns = entry[:1], int.from_bytes(entry[1:9], "big", signed=True)
        size = int.from_bytes(entry[9:11], "big")
        key, body = entry[11:11 + size].decode(errors="replace"), entry[11 + size:]
        if tag != _LOG_ITEMS:
            advanced = len(bucket.due(tag, watermark_ns))
            if len(body) == 4 and int.from_bytes(body, "big") != advanced:
                log.warning("a %s bucket's replayed advance runs other keys than the original; bucket state may differ "
                            "watermark_ns=%d original=%d replayed=%d", self.kind, watermark_ns, int.from_bytes(body, "big"), advanced)
            for _ in self._advance_keys(bucket, tag, watermark_ns):
                pass  # emitted before the checkpoint
            return
        try:
            self.apply(bucket, key, self.replayed_item(body), watermark_ns)
        except Exception as exc:  # a log entry is this job's own bytes: one that does not decode is a bug, kept out
            log.error("an entry of a %s bucket's log does not replay; skipped key=%s error=%s", self.kind, key, exc)

    def logged(self, bucket: _Bucket, tag: bytes, watermark_ns: int, key: str = "", body: bytes = b"") -> None:
        """One entry on the bucket's log (an item for `key`, or an advance), or a new snapshot when the log is long.
        Each entry has the bucket's next sequence number, and a snapshot the number of the last entry it holds:
        a replay skips what the snapshot has even if the log was not emptied."""
        if tag == _LOG_ITEMS:
            bucket.idle_flushed = False  # input: the next quiet spell flushes again
        bucket.seq += 1
        if bucket.log_size >= _SNAPSHOT_EVERY:
            self.snapshot_bucket(bucket)
            return
        raw_key = key.encode()[:65535]
        self.log.add(_ENTRY_MARK + bucket.seq.to_bytes(8, "big") + tag + watermark_ns.to_bytes(8, "big", signed=True)
                     + len(raw_key).to_bytes(2, "big") + raw_key + body)
        bucket.log_size += 1

    def snapshot_bucket(self, bucket: _Bucket) -> None:
        """The bucket's stages as its new snapshot (an empty bucket's too: its sequence number stays), the log emptied."""
        from streams.edge import encode_bucket

        self.log.clear()
        bucket.log_size = 0
        self.snapshot.update(_SNAPSHOT_MARK + bucket.seq.to_bytes(8, "big") + encode_bucket(bucket.stages))

    def schedule(self, bucket: _Bucket, ctx: Any) -> None:
        """While the bucket holds a stage: a processing-time tick every watermark interval, and an event-time
        timer at the end of input (Flink's last watermark), the only event-time timer these operators set.

        Why not an event-time timer at each deadline: PyFlink holds back a watermark that arrives during a
        bundle and processes it when the bundle ends; when that end is a checkpoint's, the timers the
        watermark fires start a bundle inside it, and in about one run in ten that bundle never completed
        (the Python worker waiting for its input, the JVM for its results: checkpoints and outputs stopped).
        A tick fires like an input record instead. The last watermark is processed without holding back.

        The ticks are set `_TICKS_AHEAD` intervals ahead, each tick adding the next. PyFlink registers a timer
        the Python worker set through the task's mailbox, after the bundle that set it ends, and does not do
        so before a checkpoint (`prepareSnapshotPreBarrier` ends the bundle but does not drain them, as a
        watermark does): a checkpoint taken at the end of the bundle that set a bucket's only tick held no
        tick for it. Restored from that checkpoint, a bucket that got no more input never ticked again and
        its stages never emitted (whole sockets' spans in the kill/restore test). Ticks set intervals ago
        are in every checkpoint."""
        timers = ctx.timer_service()
        fired, bucket.fired_ms = bucket.fired_ms, None
        if timers.current_watermark() == MAX_WATERMARK_MS:  # the input has ended: the last advance was the final one
            return
        interval = int(self.options.watermark_interval_s * 1000)
        now = timers.current_processing_time()  # (a tick restored late fires at once: the chain goes on from now)
        start = max(fired, now) if fired is not None else now if bucket.tick_at is None else None
        if bucket.stages and start is not None:  # a tick carries the chain on; without one pending, a chain starts
            for n in range(1, _TICKS_AHEAD + 1):
                at = start + n * interval
                if bucket.tick_at is None or at >= bucket.tick_at + interval:
                    timers.register_processing_time_timer(at)
                    bucket.tick_at = at
        if bucket.stages and not bucket.end_timer:
            timers.register_event_time_timer(MAX_WATERMARK_MS)
            bucket.end_timer = True

    def timer_kind(self, bucket: _Bucket, ctx: Any, timestamp: int) -> str:
        """Which of the bucket's timers fired (`_TICK` or `_END_OF_INPUT`), marked as no longer set."""
        from pyflink.datastream import TimeDomain

        if ctx.time_domain() == TimeDomain.EVENT_TIME:
            bucket.end_timer = False
            return _END_OF_INPUT
        bucket.fired_ms = timestamp
        if bucket.tick_at is not None and timestamp >= bucket.tick_at:  # the last tick set: none left pending
            bucket.tick_at = None
        return _TICK

    def idle(self, bucket: _Bucket, after_s: float) -> bool:
        """True once per quiet spell: the worker has had no input for `after_s` and the bucket has not been
        flushed since its last input.

        Before the worker's first input the spell lasts the sources' idle timeout at least. A restored bucket's
        ticks fire at once, and its input comes when the sources have read again (5 s after the start in the
        kill/restore test, whose idle flush is 4 s): flushed then, the restored flows would time out their open
        requests and the restored windows would close before the events still to come for them."""
        if bucket.idle_flushed:
            return False
        if self.last_input is None:
            quiet_s, after_s = time.monotonic() - self.opened, max(after_s, self.options.source_idle_timeout_s)
        else:
            quiet_s = time.monotonic() - self.last_input
        if quiet_s < after_s:
            return False
        bucket.idle_flushed = True
        return True

    def advance_bucket(self, bucket: _Bucket, ctx: Any, tag: bytes, watermark_ns: int) -> Iterator[Any]:
        """Advance the keys that are due (every key for a final or an idle flush), emit what they give, log it
        (a tick with nothing due changes nothing and logs nothing)."""
        due = len(bucket.due(tag, watermark_ns))
        if due:
            yield from self._advance_keys(bucket, tag, watermark_ns)
            if not bucket.stages:
                bucket.seq += 1
                self.snapshot_bucket(bucket)
            else:
                self.logged(bucket, tag, watermark_ns, body=due.to_bytes(4, "big"))
        self.schedule(bucket, ctx)

    def _advance_keys(self, bucket: _Bucket, tag: bytes, watermark_ns: int) -> Iterator[Any]:
        from streams.edge import encode_bucket

        for key in bucket.due(tag, watermark_ns):
            stage = bucket.stages[key]
            out, failure = self.advance(key, stage, tag, watermark_ns)
            if failure is not None:  # no record to blame: the key's state goes to the dead letters, the key starts again
                _log_once(failure.reason, failure.detail)
                yield from self.failed(key, failure, encode_bucket({key: stage}))
                bucket.drop(key)
                continue
            yield from self.emit(key, out)
            if stage.empty:
                bucket.drop(key)
            else:
                bucket.put(key, stage, self.deadline_ns(stage))


class _Settled:
    """The watermark as an operator fed by a ticking stage may act on: the one it saw `delay_s` ago.

    The stage before emits what a watermark makes due on its next tick, not before it forwards that watermark
    (event-time timers would order them, and they hang PyFlink, see `_Buckets.schedule`). A tick comes within
    a watermark interval and its outputs leave within a bundle's time, so by `delay_s` (twice both) what the
    stage before emitted at a watermark has arrived, and a window or a request closed at it misses none of
    it. Without this, at parallelism 4 a RED window closed with 511 of its 1,206 requests."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.seen: deque[tuple[float, int]] = deque()  # (when first seen, watermark), newest last
        self.settled_ns = 0

    def watermark_ns(self, ctx: Any) -> int:
        now, current = time.monotonic(), _watermark_ns(ctx)
        if not self.seen or self.seen[-1][1] != current:
            self.seen.append((now, current))
        while self.seen and now - self.seen[0][0] >= self.delay_s:
            self.settled_ns = max(self.settled_ns, self.seen.popleft()[1])
        return self.settled_ns


def _watermark_ns(ctx: Any) -> int:
    # Long.MIN_VALUE before the first watermark, Long.MAX_VALUE at the end of input: kept within 0 and a long
    return max(min(ctx.timer_service().current_watermark() * _MS, MAX_NS), 0)


def key_group(key: int, max_parallelism: int = MAX_PARALLELISM) -> int:
    """The key group Flink gives an INT key: MathUtils.murmurHash(Integer.hashCode(key)) % max parallelism
    (KeyGroupRangeAssignment.assignToKeyGroup)."""
    mask = 0xFFFF_FFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    code = key & mask
    code = rotl((code * 0xCC9E2D51) & mask, 15)
    code = rotl((code * 0x1B873593) & mask, 13)
    code = ((code * 5 + 0xE6546B64) & mask) ^ 4
    code ^= code >> 16
    code = (code * 0x85EBCA6B) & mask
    code ^= code >> 13
    code = (code * 0xC2B2AE35) & mask
    code ^= code >> 16
    signed = code - (1 << 32) if code >= 1 << 31 else code
    return (abs(signed) if signed != -(1 << 31) else 0) % max_parallelism


def _bucket_keys(max_parallelism: int) -> list[int]:
    """For each key group, the smallest INT key Flink gives it: bucket i is keyed so that it lands in key group i,
    so the buckets spread over the subtasks exactly as the key groups do."""
    keys: dict[int, int] = {}
    candidate = 0
    while len(keys) < max_parallelism:
        keys.setdefault(key_group(candidate, max_parallelism), candidate)
        candidate += 1
    return [keys[group] for group in range(max_parallelism)]


_BUCKET_KEYS = _bucket_keys(MAX_PARALLELISM)


def bucket_of(key: str) -> int:
    """The Flink key of a stage's key: its bucket's (CRC-32 of the key: the same in every process, unlike hash())."""
    return _BUCKET_KEYS[zlib.crc32(key.encode(errors="replace")) % MAX_PARALLELISM]


def _bucket_marker_keys(name: str) -> list[str]:
    """One stage key per bucket, for the marker rows `name` sent to every bucket of a stage."""
    by_bucket: dict[int, str] = {}
    n = 0
    while len(by_bucket) < MAX_PARALLELISM:
        key = f"\0{name}{n}"
        by_bucket.setdefault(zlib.crc32(key.encode()) % MAX_PARALLELISM, key)
        n += 1
    return [by_bucket[b] for b in range(MAX_PARALLELISM)]


_WAKE_KEYS = _bucket_marker_keys("wake")  # after a restart: load the bucket, set its ticks (`_Keyed._element`)
_WAKE = frozenset(_WAKE_KEYS)
_FLUSHED_KEYS = _bucket_marker_keys("flushed")  # a conversation worker's idle flush is done (`_keyed_function`)
_FLUSHED = frozenset(_FLUSHED_KEYS)


def _wake_rows() -> list[Any]:
    from pyflink.common import Row

    return [Row(key, b"") for key in _WAKE_KEYS]


def _flushed_rows() -> list[Any]:
    from pyflink.common import Row

    return [Row(key, b"") for key in _FLUSHED_KEYS]


def _routed_row(key: str, item: tuple[Any, ...]) -> Any:
    from pyflink.common import Row

    from streams.edge import encode_routed

    return Row(key, encode_routed(item))


class _Workloads:
    """The workload index of one Python worker, from the broadcast resource tags; Flink's broadcast state holds
    them (resource id -> the tag's JSON) for a restore, read back into the index on the first element after it."""

    def __init__(self) -> None:
        from tracetap.workloads import WorkloadIndex

        self.index = WorkloadIndex()
        self.loaded = False

    def apply(self, row: Any, ctx: Any) -> None:
        import orjson

        state = ctx.get_broadcast_state(_resource_state())
        record = None if row.v is None else orjson.loads(row.v)
        self.index.apply(row.key, record)
        if record is None:
            state.remove(row.key)
        else:
            state.put(row.key, row.v)

    def load(self, ctx: Any) -> None:
        if self.loaded:
            return
        import orjson

        self.loaded = True
        for resource_id, blob in ctx.get_broadcast_state(_resource_state()).items():
            self.index.apply(resource_id, orjson.loads(blob))


# the job ------------------------------------------------------------------------------------------------
def _row_of(table: Any) -> Any:
    """The DataStream type of a table's rows (to pass them on through a Python function unchanged)."""
    from pyflink.common import Types

    names = table.get_schema().get_field_names()
    kinds = {"k": Types.PRIMITIVE_ARRAY(Types.BYTE()), "v": Types.PRIMITIVE_ARRAY(Types.BYTE()), "topic": Types.STRING(),
             "partition": Types.INT(), "offset": Types.LONG(), "ts": Types.INSTANT()}
    return Types.ROW_NAMED(names, [kinds[n] for n in names])


def _with(props: dict[str, str], **options: str) -> str:
    pairs = {**{f"properties.{k}": v for k, v in props.items()}, **options}
    return ",\n".join(f"  '{_sql_quote(k)}' = '{_sql_quote(v)}'" for k, v in pairs.items())


def _sql_quote(text: str) -> str:
    """Inside a SQL string literal a quote is doubled (a password may hold one)."""
    return str(text).replace("'", "''")


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest completed checkpoint (a chk-N folder with its _metadata) under a job's checkpoint folder."""
    done = [p.parent for p in checkpoint_dir.glob("*/chk-*/_metadata")]
    return max(done, key=lambda p: (p.stat().st_mtime, int(p.name.split("-")[1])), default=None)


def build_job(settings: Settings, options: FlinkOptions, jars: list[Path]) -> Any:
    """The StreamExecutionEnvironment with the whole pipeline attached (call .execute on it)."""
    from pyflink.common import Configuration, Types
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    row_type, item_type = _types()
    prefix = settings.topics.prefix
    conf = Configuration()
    conf.set_string("pipeline.jars", ";".join(jar.resolve().as_uri() for jar in jars))
    conf.set_string("python.client.executable", sys.executable)
    if options.target == "local":  # a session cluster's TaskManagers use their own (infra/flink-cluster.sh sets it)
        conf.set_string("python.executable", sys.executable)
    if not 1 <= options.parallelism <= MAX_PARALLELISM:
        raise TracetapError(f"--parallelism must be within 1 and {MAX_PARALLELISM} (the job's buckets of keys)")
    conf.set_string("parallelism.default", str(options.parallelism))
    conf.set_string("pipeline.max-parallelism", str(MAX_PARALLELISM))  # a bucket per key group (`_Buckets`)
    # A Python operator commits its touched state at the end of each bundle, one synchronous round trip per
    # bucket and state, and ends a bundle at each watermark too: fewer, larger bundles amortize that.
    conf.set_string("python.fn-execution.bundle.size", str(options.bundle_size))
    conf.set_string("python.fn-execution.bundle.time", f"{int(options.bundle_time_s * 1000)}")
    conf.set_string("pipeline.auto-watermark-interval", f"{int(options.watermark_interval_s * 1000)} ms")
    conf.set_string("pipeline.name", options.app_id)
    if options.profile:
        conf.set_string("python.profile.enabled", "true")
    if not options.bounded:  # a replay's partitions all hold their records, so none is idle: under backpressure a reader
        # that emitted nothing for the timeout would be marked idle, and its records would come late behind the others' watermark
        conf.set_string("table.exec.source.idle-timeout", f"{int(options.source_idle_timeout_s * 1000)} ms")
    # A failure restarts the job from its last checkpoint a few times, then fails it for good (no crash loop).
    conf.set_string("restart-strategy.type", "fixed-delay")
    conf.set_string("restart-strategy.fixed-delay.attempts", str(options.restart_attempts))
    conf.set_string("restart-strategy.fixed-delay.delay", "5 s")
    if options.checkpoint_interval_s > 0:
        conf.set_string("execution.checkpointing.interval", f"{int(options.checkpoint_interval_s * 1000)} ms")
        conf.set_string("execution.checkpointing.mode", "EXACTLY_ONCE")
        conf.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
        if options.checkpoint_dir is not None:
            conf.set_string("state.checkpoints.dir", options.checkpoint_dir.resolve().as_uri())
        conf.set_string("state.checkpoints.num-retained", "3")
    if options.from_checkpoint is not None:
        conf.set_string("execution.savepoint.path", str(options.from_checkpoint))
    if options.target == "remote":
        if not options.jobmanager or ":" not in options.jobmanager:
            raise TracetapError("--target remote needs --jobmanager HOST:PORT (the JobManager's REST endpoint)")
        host, port = options.jobmanager.rsplit(":", 1)
        conf.set_string("execution.target", "remote")
        conf.set_string("rest.address", host)
        conf.set_string("rest.port", port)
    if options.target == "remote":  # a RemoteStreamEnvironment: the job graph and its jars go to the cluster over REST
        from pyflink.java_gateway import get_gateway

        import pyflink

        # PyFlink's runtime (flink-python) is not in a cluster's lib/ by default: it travels with the job, as the connector
        shipped = [*jars, *Path(pyflink.__file__).parent.joinpath("opt").glob("flink-python-*.jar")]
        gateway = get_gateway()
        j_jars = gateway.new_array(gateway.jvm.String, len(shipped))
        for i, jar in enumerate(shipped):
            j_jars[i] = str(jar.resolve())
        j_env = gateway.jvm.org.apache.flink.streaming.api.environment.StreamExecutionEnvironment.createRemoteEnvironment(
            host, int(port), conf._j_configuration, j_jars)
        env = StreamExecutionEnvironment(j_env)
    else:
        env = StreamExecutionEnvironment.get_execution_environment(conf)
    if options.target == "remote":  # the cluster's Python workers need tracetap's packages
        root = Path(__file__).resolve().parent.parent
        for package in ("tracetap", "schemas", "streams"):
            env.add_python_file(str(root / package))
    tables = StreamTableEnvironment.create(env)

    props = java_properties(settings.kafka)  # the same connection and credentials as the Python clients
    guarantee = "exactly-once" if options.checkpoint_interval_s > 0 else "at-least-once"
    bounded = {"scan.bounded.mode": "latest-offset"} if options.bounded else {}
    source_options = dict(connector="kafka", **{"scan.startup.mode": "group-offsets", "properties.group.id": options.app_id,
                                                "properties.auto.offset.reset": "earliest", "properties.isolation.level": "read_committed",
                                                "key.format": "raw", "key.fields": "k", "value.format": "raw",
                                                "value.fields-include": "EXCEPT_KEY"}, **bounded)
    columns = """k BYTES, v BYTES, `topic` STRING METADATA VIRTUAL, `partition` INT METADATA VIRTUAL, `offset` BIGINT METADATA VIRTUAL,
  ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp',
  WATERMARK FOR ts AS ts - INTERVAL '{bound}' SECOND""".format(bound=options.stages.max_out_of_order_ns / 1e9)
    raw_topics = ";".join(s.full_name(prefix) for s in RAW_INPUTS)
    tables.execute_sql(f"CREATE TEMPORARY TABLE raw_events ({columns}) WITH (\n{_with(props, **source_options, topic=raw_topics)})")
    tables.execute_sql(f"CREATE TEMPORARY TABLE resources ({columns}) WITH (\n{_with(props, **source_options, topic=RESOURCES.full_name(prefix))})")
    sink_options = {"connector": "kafka", "topic": ";".join(s.full_name(prefix) for s in OUTPUTS), "key.format": "raw",
                    "key.fields": "k", "value.format": "raw", "value.fields-include": "EXCEPT_KEY",
                    "sink.delivery-guarantee": guarantee, "sink.transactional-id-prefix": f"{options.app_id}-tx",
                    "properties.transaction.timeout.ms": "900000"}  # the broker's default transaction.max.timeout.ms
    tables.execute_sql(f"CREATE TEMPORARY TABLE outputs (t STRING METADATA FROM 'topic', k BYTES, v BYTES) WITH (\n{_with(props, **sink_options)})")

    from pyflink.datastream import OutputTag

    routed_type = _routed_type()
    # Each tag its own type object: the functions that name the tags travel pickled, and a type Flink has already
    # turned into its Java twin (as `output_type` does) no longer pickles.
    to_process, to_series = OutputTag("to-process", _routed_type()), OutputTag("to-series", _routed_type())
    flow_routes = {PROCESS: to_process, SERIES: to_series}
    flow_fn, flow_dead = _flow_function(settings, options, flow_routes)
    resource_fn, resource_dead = _resource_function(settings)
    late_fn, late_dead = _late_filter(settings, options)
    raw_table = tables.from_path("raw_events")
    raw = tables.to_data_stream(raw_table).process(late_fn, output_type=_row_of(raw_table)).name("lateness").uid("lateness")
    flows = (raw.key_by(lambda r: bucket_of((r.k or b"").decode(errors="replace")), key_type=Types.INT())
             .process(flow_fn, output_type=routed_type).name("flow stage").uid("flow-buckets"))
    resources = (tables.to_data_stream(tables.from_path("resources")).process(resource_fn, output_type=routed_type)
                 .name("resources").uid("resources"))
    tags = resources.broadcast(_resource_state())

    def by_key(stream: Any) -> Any:
        return stream.key_by(lambda r: bucket_of(r.key), key_type=Types.INT())

    conversations = (by_key(flows).connect(tags).process(_keyed_function(CONVERSATION, settings, options, flow_routes), output_type=row_type)
                     .name("conversation stage").uid("conversation-buckets"))
    processes = (by_key(conversations.get_side_output(to_process).union(flows.get_side_output(to_process)))
                 .process(_keyed_function(PROCESS, settings, options, {}), output_type=row_type).name("process stage").uid("process-buckets"))
    series = (by_key(conversations.get_side_output(to_series).union(flows.get_side_output(to_series))).connect(tags)
              .process(_keyed_function(SERIES, settings, options, {}), output_type=row_type).name("series stage").uid("series-buckets"))
    out = conversations.union(processes, series, raw.get_side_output(late_dead), flows.get_side_output(flow_dead),
                              resources.get_side_output(resource_dead))
    statements = tables.create_statement_set()
    statements.add_insert("outputs", tables.from_data_stream(out))
    statements.attach_as_datastream()
    return env
