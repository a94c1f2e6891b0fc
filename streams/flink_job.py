"""`tracetap streams flink`: the core's two stages (tracetap/stages.py) hosted by PyFlink.

    raw.socket-data ┐ Kafka source (SQL connector, raw bytes,  lateness per       keyBy(flow id)     keyBy(one key)
    raw.packets     ├ per-partition watermarks on the record  ─▶ input partition ─▶ FlowFunction ──┬─▶ TraceFunction ─▶ Kafka sink
    raw.lifecycle   ┘ timestamps, which the agents set to      (as in Faust)        (FlowStage)    │   (TraceStage)    (transactions)
                      event time)
    resources ─────── Kafka source ─▶ ResourceFunction (decode) ───────────────────────────────────┘

The same stage objects as the Faust job, in Flink keyed state as bytes of streams/edge.py's data-only
encoding (never pickled), with Flink's timers: each flow sets an event-time timer at its stage's next
deadline (a request timeout, a response's linger, an idle assembler's eviction), and the trace stage
advances on every watermark step. Undecodable and late records, and records the core raises on, go to
the dead-letter topic with the reason, as in the Faust job. With checkpointing on (the
default), outputs are written in Kafka transactions committed at each checkpoint: consumers that read
with isolation.level=read_committed see every record exactly once, a checkpoint interval later.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from schemas.catalog import DEAD_LETTER, RESOURCES
from schemas.deadletter import dead_letter_key, dead_letter_record
from schemas.kafka import java_properties
from streams.host import OUTPUTS, RAW_INPUTS, log_registry_wait, output_records, raw_kinds, registry_waits
from tracetap.config import Settings
from tracetap.errors import TracetapError, UndecodableState
from tracetap.pipeline import KeyedPipeline
from tracetap.stages import Emitted, FlowStage, StageConfig

log = logging.getLogger("tracetap.streams.flink")

COMPONENT = "tracetap streams flink"
MAX_WATERMARK_MS = 2**63 - 1  # Flink's end-of-input watermark
MAX_NS = 2**63 - 1
_MS = 1_000_000


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
    profile: bool = False  # cProfile of the Python workers, printed into Flink's log (python.profile.enabled)
    stages: StageConfig = field(default_factory=StageConfig)


_FLOW_CACHE = 20_000  # decoded flow stages a worker keeps beside their bytes in state, so a record does not decode its flow


def _types() -> tuple[Any, Any]:
    """The output rows (topic, key, value), and the bytes of streams/edge.py's encoding, which carry the trace
    stage's input between operators and every stage's state (not Flink's pickled bytes type: nothing is pickled)."""
    from pyflink.common import Types

    row = Types.ROW_NAMED(["t", "k", "v"], [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE())])
    return row, Types.PRIMITIVE_ARRAY(Types.BYTE())


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

    def emitted(self, out: Emitted) -> Iterator[Any]:
        for spec, key, record in output_records(out):
            yield self.row(spec.name, key, record)


def _flow_function(settings: Settings, options: FlinkOptions) -> Any:
    from pyflink.datastream import KeyedProcessFunction, OutputTag, TimeDomain
    from pyflink.datastream.state import ValueStateDescriptor

    from schemas.serde import UndecodableRecord
    from streams.edge import StageItem, call_core, decode_flow, encode_flow, encode_items, flow_record

    row_type, bytes_type = _types()
    prefix = settings.topics.prefix
    kinds = raw_kinds(prefix)
    stages = options.stages
    flush_horizon_ns = stages.flush_horizon_ns
    idle_flush_ms = int(options.idle_flush_s * 1000)

    class FlowFunction(KeyedProcessFunction):
        """Stage 1, per flow id: a FlowStage in keyed state, an event-time timer at its next deadline (rounded up
        to a whole second, so that a busy flow does not move its timer on every record: a timer that finds
        nothing due costs less than a registration per record), and a processing-time timer for the idle flush."""

        def open(self, runtime_context: Any) -> None:
            self.codec = _Codec(settings)
            self.stage_state = runtime_context.get_state(ValueStateDescriptor("flow-stage", bytes_type))
            metrics = runtime_context.get_metrics_group()
            self.consumed = {kind: metrics.counter(f"consumed_{kind}") for kind in set(kinds.values())}
            self.dead_letters = metrics.counter("dead_letters")
            self.stage_errors = metrics.counter("stage_errors")  # records the core raised on or refused (dead-lettered too)
            self.timers: dict[str, int] = {}  # flow id -> the event-time timer set for it (a cache: Flink holds them)
            self.stages: dict[str, tuple[bytes, FlowStage]] = {}  # flow id -> (its bytes in state, them decoded)
            self.last_input = time.monotonic()
            self.max_seen_ns = 0

        def process_element(self, row: Any, ctx: Any) -> Iterator[Any]:
            self.last_input = time.monotonic()
            kind = kinds[row.topic]
            self.consumed[kind].inc()
            try:
                record = self.codec.decoded(row.v)
            except UndecodableRecord as exc:
                self.dead_letters.inc()
                yield DEAD_LETTERS, self.codec.dead_letter(row, exc.reason, exc.detail)
                return
            time_ns, failure = call_core(FlowStage.event_time_ns, kind, record)
            if failure is None:
                self.max_seen_ns = max(self.max_seen_ns, time_ns)
                stage, dead = self._stage(ctx)
                if dead is not None:
                    yield DEAD_LETTERS, dead
                if stage is None:  # a new flow: watch it for the idle flush
                    stage = FlowStage(stages)
                    now_ms = ctx.timer_service().current_processing_time()
                    ctx.timer_service().register_processing_time_timer(now_ms + idle_flush_ms)
                stage, spans, failure = flow_record(stage, kind, record, stages)
            if failure is not None:  # the state in Flink is still the bytes from before the record
                self.stages.pop(ctx.get_current_key(), None)
                self.dead_letters.inc()
                self.stage_errors.inc()
                _log_once(failure.reason, failure.detail)
                yield DEAD_LETTERS, self.codec.dead_letter(row, failure.reason, failure.detail, failure)
                return
            items = [StageItem("span", "flink", span) for span in spans]
            if kind == "lifecycle":
                items.append(StageItem("lifecycle", "flink", record))
            if items:
                yield encode_items(items)
            self._save(stage, ctx)

        def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
            stage, dead = self._stage(ctx)
            if dead is not None:
                yield DEAD_LETTERS, dead
            if stage is None:
                return
            if ctx.time_domain() == TimeDomain.EVENT_TIME:
                self.timers.pop(ctx.get_current_key(), None)
                watermark_ns = ctx.timer_service().current_watermark() * _MS
            else:  # idle flush: with no input for idle_flush_s, as the Faust job's
                ctx.timer_service().register_processing_time_timer(timestamp + idle_flush_ms)  # watch on while the flow lives
                if time.monotonic() - self.last_input < options.idle_flush_s:
                    return
                watermark_ns = max(self.max_seen_ns, stage.latest_event_ns) + flush_horizon_ns
            due, failure = call_core(stage.advance, watermark_ns)
            if failure is not None:  # no record to blame: the flow's state goes to the dead letters, the flow starts again
                key = ctx.get_current_key()
                self.stage_errors.inc()
                _log_once(failure.reason, failure.detail)
                yield DEAD_LETTERS, self.codec.dead_letter_of(failure.reason, f"advance: {failure.detail}", key.encode(),
                                                              self.stage_state.value(), failure)
                self._save(FlowStage(stages), ctx)
                return
            if due:
                yield encode_items([StageItem("span", "flink", span) for span in due])
            self._save(stage, ctx)

        def _stage(self, ctx: Any) -> tuple[FlowStage | None, Any]:
            """The flow's stage (None for a new flow), decoded once per worker; and a dead letter when its state
            is not the stages' encoding (the flow then starts again)."""
            blob = self.stage_state.value()
            if blob is None:
                return None, None
            key = ctx.get_current_key()
            held = self.stages.get(key)
            if held is not None and held[0] == blob:
                return held[1], None
            try:
                _, stage = decode_flow(blob, stages)
            except UndecodableState as exc:
                self.stage_state.clear()
                self.dead_letters.inc()
                _log_once("UNDECODABLE_STATE", str(exc))
                return None, self.codec.dead_letter_of("UNDECODABLE_STATE", str(exc), key.encode(), blob)
            if len(self.stages) >= _FLOW_CACHE:
                self.stages.clear()
            self.stages[key] = (blob, stage)
            return stage, None

        def _save(self, stage: FlowStage, ctx: Any) -> None:
            """Keep the stage (or drop it once empty) and make sure a timer fires by its next deadline."""
            key = ctx.get_current_key()
            if stage.empty:
                self.stage_state.clear()
                self.stages.pop(key, None)
                self.timers.pop(key, None)
                return
            blob = encode_flow(stage)
            self.stage_state.update(blob)
            self.stages[key] = (blob, stage)
            due = stage.next_deadline_ns()
            if due is not None:
                due_ms = math.ceil(due / 1_000_000_000) * 1000
                if self.timers.get(key) != due_ms:
                    ctx.timer_service().register_event_time_timer(due_ms)
                    self.timers[key] = due_ms

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
    from streams.edge import StageItem, encode_items

    row_type, _ = _types()

    class ResourceFunction(ProcessFunction):
        """Workload tags for the trace stage; a tombstone removes one."""

        def open(self, runtime_context: Any) -> None:
            self.codec = _Codec(settings)

        def process_element(self, row: Any, ctx: Any) -> Iterator[Any]:
            resource_id = (row.k or b"").decode(errors="replace")
            if row.v is None:
                yield encode_items([StageItem("resource", resource_id, None)])
                return
            try:
                record = self.codec.decoded(row.v)
            except UndecodableRecord as exc:
                yield DEAD_LETTERS, self.codec.dead_letter(row, exc.reason, exc.detail)
                return
            yield encode_items([StageItem("resource", record["resource_id"], record)])

    DEAD_LETTERS = OutputTag("resource-dead-letters", row_type)
    return ResourceFunction(), DEAD_LETTERS


_LOG_ITEMS, _LOG_ADVANCE, _LOG_FINAL = b"I", b"A", b"F"
_SNAPSHOT_EVERY = 1000  # entries of the trace stage's input log between two snapshots of the whole stage


def _log_entry(kind: bytes, watermark_ns: int, body: bytes = b"") -> bytes:
    return kind + watermark_ns.to_bytes(8, "big", signed=True) + body  # the stage's watermark: 0 up to MAX_NS


def _trace_function(settings: Settings, options: FlinkOptions) -> Any:
    from pyflink.datastream import KeyedProcessFunction, TimeDomain
    from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

    from streams.edge import decode_items, decode_trace, encode_items, encode_trace, trace_item

    _, bytes_type = _types()
    stages = options.stages

    class TraceFunction(KeyedProcessFunction):
        """Stage 2, one key: the TraceStage, advanced on every watermark step. Encoding the whole stage (every
        waiting span) on each input would cost its size per record, so Flink's state holds a snapshot of it
        and the log of what happened since (each input batch and each advance, with the watermark it saw):
        a restored worker replays the log onto the snapshot and is exactly where the checkpoint was."""

        def open(self, runtime_context: Any) -> None:
            self.codec = _Codec(settings)
            self.snapshot = runtime_context.get_state(ValueStateDescriptor("trace-stage", bytes_type))
            self.log = runtime_context.get_list_state(ListStateDescriptor("trace-stage-log", bytes_type))
            metrics = runtime_context.get_metrics_group()
            self.late = metrics.counter("late_spans")
            self.produced = metrics.counter("produced")
            self.stage_errors = metrics.counter("stage_errors")
            self.live: KeyedPipeline | None = None  # the stage, once read from state in this worker
            self.logged = 0  # log entries since the snapshot
            self.last_input = time.monotonic()
            self.flushed = False
            self.next_step: int | None = None  # caches of the timers set (Flink holds them; after a restore they are set again)
            self.idle_timer = False
            self.last_output_s: float | None = None  # wall time of the last output batch (benchmarks/stream_jobs.py)

        def _stage(self, ctx: Any) -> KeyedPipeline:
            if self.live is None:
                self.live = self._restore()
            watermark_ms = ctx.timer_service().current_watermark()  # Long.MAX_VALUE at the end of input: kept within a long in ns
            self.live.engine_watermark(min(watermark_ms * _MS, MAX_NS))
            return self.live

        def _restore(self) -> KeyedPipeline:
            """The snapshot with the log replayed onto it (what the replay emits was emitted before the checkpoint)."""
            blob = self.snapshot.value()
            stage = None
            if blob is not None:
                try:
                    stage = decode_trace(blob, stages)
                except UndecodableState as exc:
                    log.error("the trace stage's state is not its encoding; starting from an empty stage error=%s", exc)
            stage = stage or KeyedPipeline(stages)
            self.logged = 0
            for entry in self.log.get() or ():
                self.logged += 1
                kind, watermark_ns = entry[:1], int.from_bytes(entry[1:9], "big", signed=True)
                stage.engine_watermark(watermark_ns)
                if kind == _LOG_ITEMS:
                    try:
                        items = decode_items(entry[9:])
                    except UndecodableState as exc:  # a checkpoint this job did not write: skipped, never run
                        log.error("an entry of the trace stage's log is not its encoding; skipped error=%s", exc)
                        continue
                    for item in items:
                        trace_item(stage, item)
                else:
                    stage.advance(final=kind == _LOG_FINAL)
            return stage

        def process_element(self, blob: bytes, ctx: Any) -> Iterator[Any]:
            self.last_input, self.flushed = time.monotonic(), False
            stage = self._stage(ctx)
            try:
                items = decode_items(blob)
            except UndecodableState as exc:  # from this job's own operators: a bug, kept for a look
                self.stage_errors.inc()
                _log_once("UNDECODABLE_STATE", str(exc))
                yield self.codec.dead_letter_of("UNDECODABLE_STATE", str(exc), None, blob)
                return
            self.log.add(_log_entry(_LOG_ITEMS, stage.watermark_ns, blob))
            self.logged += 1
            for item in items:
                on_time, failure = trace_item(stage, item)
                if failure is not None:
                    self.stage_errors.inc()
                    _log_once(failure.reason, failure.detail)
                    yield self.codec.dead_letter_of(failure.reason, failure.detail, None, encode_items([item]), failure)
                elif not on_time:
                    self.late.inc()
            timers = ctx.timer_service()
            step = max(timers.current_watermark() + 1, 0)
            if self.next_step != step:  # one registration per watermark step, not per record
                timers.register_event_time_timer(step)
                self.next_step = step
            if not self.idle_timer:
                timers.register_processing_time_timer(timers.current_processing_time() + int(options.idle_flush_s * 1000))
                self.idle_timer = True

        def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
            stage = self._stage(ctx)
            timers = ctx.timer_service()
            if ctx.time_domain() == TimeDomain.EVENT_TIME:
                final = timers.current_watermark() == MAX_WATERMARK_MS
                out = self._advance(stage, final)
                if not final and stage.has_open_work:
                    self.next_step = timers.current_watermark() + 1
                    timers.register_event_time_timer(self.next_step)
            else:  # idle flush
                timers.register_processing_time_timer(timestamp + int(options.idle_flush_s * 1000))  # keep watching
                self.idle_timer = True
                # After the flows' own idle flushes: a flow's timer fires every idle_flush_s, so its flush comes up to twice
                # that after its last record; a span it times out after this final advance would find its window closed.
                if self.flushed or time.monotonic() - self.last_input < 2 * options.idle_flush_s + 1:
                    return
                self.flushed = final = True
                out = self._advance(stage, final)
            for row in self.codec.emitted(out):
                self.produced.inc()
                yield row
            if out:  # once per output batch, not per record
                self.last_output_s = time.time()
            if final and self.last_output_s is not None:
                log.info("final advance app_id=%s last_output_unix_s=%.3f", options.app_id, self.last_output_s)

        def _advance(self, stage: KeyedPipeline, final: bool) -> Emitted:
            out = stage.advance(final=final)
            if final or self.logged >= _SNAPSHOT_EVERY:
                self.snapshot.update(encode_trace(stage))
                self.log.clear()
                self.logged = 0
            else:
                self.log.add(_log_entry(_LOG_FINAL if final else _LOG_ADVANCE, stage.watermark_ns))
                self.logged += 1
            return out

    return TraceFunction()


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
    conf.set_string("parallelism.default", str(options.parallelism))
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

    flow_fn, flow_dead = _flow_function(settings, options)
    resource_fn, resource_dead = _resource_function(settings)
    late_fn, late_dead = _late_filter(settings, options)
    raw_table = tables.from_path("raw_events")
    raw = tables.to_data_stream(raw_table).process(late_fn, output_type=_row_of(raw_table)).name("lateness").uid("lateness")
    flows = (raw.key_by(lambda r: (r.k or b"").decode(errors="replace"), key_type=Types.STRING())
             .process(flow_fn, output_type=item_type).name("flow stage").uid("flow-stage"))
    resources = tables.to_data_stream(tables.from_path("resources")).process(resource_fn, output_type=item_type).name("resources").uid("resources")
    traced = (flows.union(resources).key_by(lambda _: 0, key_type=Types.INT())
              .process(_trace_function(settings, options), output_type=row_type).name("trace stage").uid("trace-stage"))
    out = traced.union(raw.get_side_output(late_dead), flows.get_side_output(flow_dead), resources.get_side_output(resource_dead))
    statements = tables.create_statement_set()
    statements.add_insert("outputs", tables.from_data_stream(out))
    statements.attach_as_datastream()
    return env
