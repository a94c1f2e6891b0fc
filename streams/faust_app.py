"""`tracetap streams faust`: the core's keyed stages (tracetap/stages.py, tracetap/keyed.py) hosted by a faust-streaming app.

    raw.socket-data ┐                                    streams.<app>.conversation  streams.<app>.process
    raw.packets     ├─▶ flow agent (key: flow id,        ──▶  conversation agent    ──┬▶ process agent ──▶ spans, paths,
    raw.lifecycle   ┘   table flow-stages)                    (conversation-stages)   │  (process-stages)   metrics.red,
                           └──── lifecycle events ──────────────────────────────────┬─┘                     metrics.network,
    resources ─▶ resources agent (tags to every partition) ─▶ conversation, series  └▶ series agent  ──▶   alerts
                                                                                       (series-stages)

Every stage is keyed by something that spreads as traffic grows: the private topic between two stages is
partitioned by the next stage's key, and each key's stage is one value of its table
(streams/faust_keyed.py), so the work spreads over as many workers as the raw topics have partitions.
State lives in Faust tables backed by changelog topics; each batch's outputs are acknowledged by Kafka
before the state that produced them is written, and each state records the offsets it holds, so a worker
killed at any point resumes without loss and re-emits only records with the same ids. The tables and the
private topics carry streams/edge.py's data-only encoding; a record the core raises on is dead-lettered and
the job goes on (streams/edge.py).
"""

from __future__ import annotations

import asyncio
import heapq
import importlib.util
import logging
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import faust
from faust.streams import _current_event

from schemas.catalog import DEAD_LETTER, RESOURCES, SOCKET_DATA, TopicSpec
from schemas.deadletter import dead_letter_key, dead_letter_record
from schemas.kafka import faust_credentials
from schemas.registry import RegistryUnavailable, SchemaRegistry
from schemas.serde import AvroDeserializer, AvroSerializer, UndecodableRecord
from streams.edge import FLOW, CoreFailure, StageItem, call_core, decode_flow, encode_flow, encode_items, flow_record
from streams.faust_gaps import OffsetGuard, Refilled
from streams.faust_keyed import KEYED_STAGES, KeyedHop, Outbox, hop_topic
from streams.host import OUTPUTS, RAW_INPUTS, log_registry_wait, raw_kinds, registry_waits
from tracetap.config import Settings
from tracetap.errors import UndecodableState
from tracetap.eventtime import PartitionClocks
from tracetap.keyed import CONVERSATION, PROCESS, SERIES, KeyedCounters, Routed, conversation_of, lifecycle_routes
from tracetap.stages import FlowStage, StageConfig

log = logging.getLogger("tracetap.streams.faust")

COMPONENT = "tracetap streams faust"
_MAX_RECORD_BYTES = 512 * 1024  # of a record between two stages (the producer's default maximum request is 1 MiB)
_LATE = {CONVERSATION: "span", PROCESS: "process", SERIES: "lifecycle-metrics"}  # the stats page's names for late items


@dataclass(frozen=True, slots=True)
class FaustOptions:
    app_id: str = "tracetap-streams"
    web_port: int = 6066
    batch_events: int = 1000
    batch_within_s: float = 0.5
    idle_flush_s: float = 10.0  # no input for this long (processing time): emit what waits for the watermark
    session_timeout_s: float = 15.0  # a killed worker's partitions move to the others after this
    store: str = "rocksdb://" if importlib.util.find_spec("rocksdict") else "memory://"  # table stores
    stages: StageConfig = field(default_factory=StageConfig)


@dataclass(slots=True)
class WorkerStats:
    """What /tracetap/stats/ shows and the shutdown line reports."""

    consumed: Counter[str] = field(default_factory=Counter)
    produced: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    late: Counter[str] = field(default_factory=Counter)
    replayed: int = 0  # records a recovered state already held, skipped
    offset_gaps: int = 0  # gaps in a partition's offsets that held records Faust skipped (streams/faust_gaps.py)
    offset_gaps_unfilled: int = 0  # of those, gaps whose records did not all come when read again
    recovered_flow_states: int = 0  # flow states the last rebalance recovered from the changelog
    started: float = field(default_factory=time.monotonic)


def _records_of(items: list[StageItem], limit: int = _MAX_RECORD_BYTES) -> Iterator[bytes]:
    """The items encoded as records of at most `limit` bytes (halved until they fit; one item is one record)."""
    blob = encode_items(items)
    if len(blob) <= limit or len(items) == 1:
        yield blob
        return
    half = len(items) // 2
    yield from _records_of(items[:half], limit)
    yield from _records_of(items[half:], limit)


def _credentials(settings: Settings) -> dict[str, Any]:
    credentials = faust_credentials(settings.kafka)
    return {"broker_credentials": credentials} if credentials is not None else {}


class _PartitionEvents:
    """Faust's tables (and its RocksDB store) take a write's partition from the current event. A batch holds
    events of many partitions, so each table access runs as the latest event of the key's partition."""

    def __init__(self) -> None:
        self._latest: dict[int, Any] = {}  # strong references: a weakref to a processed event may die

    def note(self, event: Any) -> None:
        self._latest[event.message.partition] = event

    def forget(self) -> None:
        self._latest.clear()

    @contextmanager
    def of(self, partition: int) -> Iterator[bool]:
        """Within: the table sees that partition's latest event; False when this worker has none yet."""
        event = self._latest.get(partition)
        token = _current_event.set(weakref.ref(event) if event is not None else None)
        try:
            yield event is not None
        finally:
            _current_event.reset(token)


def build_app(settings: Settings, options: FaustOptions = FaustOptions()) -> tuple[faust.App, WorkerStats]:
    """The app with its topics, tables and agents, declared in data-flow order."""
    prefix = settings.topics.prefix
    registry = SchemaRegistry(settings.registry)
    decode = AvroDeserializer(registry)
    encoders = {spec.name: AvroSerializer(registry, spec.value_subject(prefix), spec.schema(), auto_register=settings.registry.auto_register)
                for spec in OUTPUTS}
    stats = WorkerStats()
    app = faust.App(
        options.app_id, broker=f"kafka://{settings.kafka.bootstrap_servers.replace(',', ';kafka://')}", store=options.store,
        web_port=options.web_port, topic_replication_factor=settings.topics.replication_factor, producer_acks=-1,
        consumer_auto_offset_reset="earliest", topic_allow_declare=True, table_standby_replicas=0,
        broker_session_timeout=options.session_timeout_s,
        **_credentials(settings))

    def raw_topic(*specs: TopicSpec) -> faust.TopicT:
        return app.topic(*(s.full_name(prefix) for s in specs), key_serializer="raw", value_serializer="raw")

    raw = raw_topic(*RAW_INPUTS)
    resources = raw_topic(RESOURCES)
    outputs = {spec.name: raw_topic(spec) for spec in OUTPUTS}
    partitions = SOCKET_DATA.partitions  # of each keyed stage's topic and table: as many workers as the flow stage
    flow_table = app.Table("flow-stages", partitions=partitions, key_type=bytes, value_type=bytes)
    flow_clock = PartitionClocks(options.stages.max_out_of_order_ns, options.stages.allowed_lateness_ns)
    flows: dict[bytes, tuple[int, FlowStage]] = {}  # key -> (partition, stage), the worker's view of flow_table
    deadlines: list[tuple[int, bytes]] = []  # heap of (when a flow next has work, its key), for the flows in `flows`
    unsaved: set[bytes] = set()  # flow keys changed by a timer before any event of their partition came
    flow_events = _PartitionEvents()

    def committed(tp: Any) -> int | None:
        """The group's committed offset of a partition, which Faust keeps from its seek at assignment."""
        return app.consumer._committed_offset.get(tp)

    guard = OffsetGuard(settings.kafka, options.app_id, stats, committed)  # the records Faust skips, read again
    last_input = {FLOW: time.monotonic(), **{kind: time.monotonic() for kind in KEYED_STAGES}}
    flushed = {FLOW: False, **{kind: False for kind in KEYED_STAGES}}  # an idle flush ran since the last input
    positions: dict[str, int] = {}  # "topic/partition" -> the last offset processed, for the lag figures
    topic_kind = raw_kinds(prefix)

    # helpers -------------------------------------------------------------------------------------------
    async def dead_letter(event: Any, reason: str, detail: str, failure: CoreFailure | None = None, value: bytes | None = None, *,
                          key: bytes | None = None, topic: str | None = None) -> None:
        """The event's record (or `value`, the part of it that failed) to the dead-letter topic; without an
        event (a stage's advance, a table value), `value` under `key` from `topic`."""
        if event is None:
            record = dead_letter_record(COMPONENT, reason, detail, topic, None, None, None, key, value, None,
                                        failure and failure.exception_type, failure and failure.frame)
        else:
            message = event.message
            record = dead_letter_record(
                COMPONENT, reason, detail, message.topic, message.partition, message.offset,
                int(message.timestamp * 1000) if message.timestamp else None, message.key, message.value if value is None else value,
                dict(message.headers or {}), failure and failure.exception_type, failure and failure.frame)
        await send_dead_letter(record)

    async def send_dead_letter(record: dict[str, Any]) -> None:
        reason = record["reason"]
        if reason not in stats.dead_letters:
            log.warning("dead-lettering records reason=%s first_detail=%r", reason, record["detail"])
        stats.dead_letters[reason] += 1
        # force: published now, not attached to the source offset's commit; awaited, so it is in Kafka before
        # the state that skipped the record is written
        fut = await outputs[DEAD_LETTER.name].send(key=dead_letter_key(record).encode(), value=encoders[DEAD_LETTER.name](record),
                                                   force=True)
        await fut

    async def undecodable_state(table: Any, partition: int, key: bytes, blob: bytes, exc: UndecodableState) -> None:
        """A table value that is not the stages' encoding (never unpickled, never run): kept in the dead-letter
        topic, and the key starts from a new stage."""
        await send_dead_letter(dead_letter_record(COMPONENT, "UNDECODABLE_STATE", str(exc), table.changelog_topic.get_topic_name(),
                                                  partition, None, None, key, blob))

    async def stage_failed(key: bytes, partition: int, stage: FlowStage, failure: CoreFailure) -> None:
        """A flow's `advance` raised: no record to blame, so its state goes to the dead-letter topic and the flow
        starts again (kept, it would raise at every watermark)."""
        await send_dead_letter(dead_letter_record(COMPONENT, failure.reason, f"advance: {failure.detail}", None, partition, None, None,
                                                  key, encode_flow(stage, partition), None, failure.exception_type, failure.frame))
        flows[key] = (partition, FlowStage(options.stages))  # empty: the next persist removes it from the table

    async def decoded(event: Any) -> dict[str, Any] | None:
        """The Avro record, or None once dead-lettered; a registry outage is waited out, never dead-lettered."""
        for delay in registry_waits():
            try:
                return decode(event.message.value)
            except UndecodableRecord as exc:
                await dead_letter(event, exc.reason, exc.detail)
                return None
            except RegistryUnavailable as exc:
                log_registry_wait(delay, exc)
                await asyncio.sleep(delay)
        return None  # never: the waits do not end

    async def flow_stage(key: bytes, partition: int) -> FlowStage:
        held = flows.get(key)
        if held is None:
            with flow_events.of(partition):
                blob = flow_table.get(key)
            if blob is not None:
                try:
                    saved, stage = decode_flow(blob, options.stages)
                    held = (partition if saved is None else saved, stage)
                except UndecodableState as exc:
                    await undecodable_state(flow_table, partition, key, blob, exc)
            held = flows[key] = held or (partition, FlowStage(options.stages))
        return held[1]

    def persist_flows(keys: set[bytes]) -> None:
        """Write the changed flow states (table store and changelog), once their outputs are in Kafka."""
        for key in keys | unsaved:
            partition, stage = flows[key]
            with flow_events.of(partition) as known:
                if not known:
                    unsaved.add(key)
                    continue
                unsaved.discard(key)
                if stage.empty:
                    flows.pop(key)
                    if key in flow_table:
                        del flow_table[key]
                else:
                    flow_table[key] = encode_flow(stage, partition)

    def records_left(tp: Any) -> int | None:
        """Records in a partition this worker has not processed yet; None when its end is not known."""
        highwater = app.consumer.highwater(tp)  # known once a fetch answered for it (no broker call here: the
        # stats page and every batch ask, and a call through Faust's consumer thread can wait on a busy fetch)
        # what this worker processed, or where its group resumed when that is further (after a restart Faust
        # may deliver records from before the committed offset, then seek to it; the consumer's own position
        # runs ahead of the agent by what Faust has fetched and buffered, so it is not used)
        position = max(positions.get(f"{tp.topic}/{tp.partition}", -1), (committed(tp) or 0) - 1)
        return None if highwater is None else max(highwater - position - 1, 0)

    async def partition_marks() -> dict[str, int | None]:
        """The watermark of each raw partition this worker reads: its clock's once read; before that 0 while it
        has (or may have) records, so that it holds time back until it has been read (after a restart, or a
        rebalance), and None when it is empty (as Flink's idle sources)."""
        marks: dict[str, int | None] = {}
        for tp in app.consumer.assignment():
            if tp.topic not in topic_kind:
                continue
            slot = f"{tp.topic}/{tp.partition}"
            clock = flow_clock.clocks.get(slot)
            marks[slot] = clock.watermark_ns if clock is not None else None if records_left(tp) == 0 else 0
        return marks

    def raw_partitions() -> list[str] | None:
        """Every partition of every raw topic: the conversation stage's upstreams (None until all are known)."""
        slots = []
        for topic in topic_kind:
            count = app.consumer.topic_partitions(topic)
            if not count:
                return None
            slots += [f"{topic}/{partition}" for partition in range(count)]
        return slots

    conversation_partitions = [f"{CONVERSATION}/{partition}" for partition in range(partitions)]
    hop_topics = {kind: app.topic(hop_topic(prefix, options.app_id, kind), partitions=partitions, key_serializer="raw", value_serializer="raw",
                                  internal=True, retention=7 * 86400) for kind in KEYED_STAGES}
    hops = {kind: KeyedHop(kind, options.stages, partitions, app.Table(f"{kind}-stages", partitions=partitions, key_type=bytes,
                                                                       value_type=bytes),
                           _PartitionEvents(), raw_partitions if kind == CONVERSATION else lambda: conversation_partitions, dead_letter)
            for kind in KEYED_STAGES}

    async def send_outbox(outbox: Outbox) -> None:
        """One record per stage and partition, each stage's acknowledged before those of the stages upstream
        of it are sent (so a lifecycle event from the flow stage is in the series stage's topic before the
        watermarks that passed it come from the conversation stage), all before the state that sent them
        is written."""
        for group in ((PROCESS, SERIES), (CONVERSATION,)):
            futures = []
            for (kind, partition), items in sorted(outbox.items.items()):
                if kind in group:
                    for blob in _records_of(items):
                        futures.append(await hop_topics[kind].send(value=blob, partition=partition, force=True))
                    last_input[kind], flushed[kind] = time.monotonic(), False  # its idle flush waits for these
            if futures:
                await asyncio.gather(*futures)

    def schedule(keys: set[bytes]) -> None:
        """Note when each of these flows next has work (`FlowStage.next_deadline_ns`), as Flink's timers."""
        for key in keys:
            held = flows.get(key)
            due = held[1].next_deadline_ns() if held is not None else None
            if due is not None:
                heapq.heappush(deadlines, (due, key))

    async def advance_flows(watermark_ns: int, touched: set[bytes], outbox: Outbox) -> None:
        """`advance` at this watermark for the flows with work due by then (the others would return nothing):
        the spans they time out into the outbox, and the keys they changed into `touched`. A batch costs what
        is due, not the number of open flows."""
        due_keys = set()
        while deadlines and deadlines[0][0] <= watermark_ns:
            due_keys.add(heapq.heappop(deadlines)[1])  # an entry whose flow has gone or moved on costs one advance
        for key in sorted(due_keys & flows.keys()):
            partition, stage = flows[key]
            due, failure = call_core(stage.advance, watermark_ns)
            if failure is not None:
                await stage_failed(key, partition, stage, failure)
                touched.add(key)
                continue
            for span in due:
                outbox.route(Routed(CONVERSATION, conversation_of(span), ("span", span)))
            if due or stage.empty:  # an emptied stage (idle assemblers forgotten) leaves the table
                touched.add(key)
        schedule(due_keys & flows.keys())

    async def emit(routed: list[Routed]) -> None:
        """The records of a stage's advance for the output topics (`Routed.to`: the topic, `Routed.key`: the record's key)."""
        futures = []
        for route in routed:
            futures.append(await outputs[route.to].send(key=route.key.encode(), value=encoders[route.to](route.item), force=True))
            stats.produced[route.to] += 1
        if futures:
            await asyncio.gather(*futures)

    # stage 1: per flow ------------------------------------------------------------------------------------
    @app.agent(raw)
    async def flow_agent(stream: faust.StreamT) -> None:
        async for events in stream.take_events(options.batch_events, within=options.batch_within_s):
            last_input[FLOW], flushed[FLOW] = time.monotonic(), False
            outbox = Outbox(partitions)
            touched: set[bytes] = set()
            for event in await guard.admit_all(events):
                if not isinstance(event, Refilled):
                    flow_events.note(event)
                message = event.message
                kind = topic_kind[message.topic]
                stats.consumed[kind] += 1
                key = message.key or b""
                stage = await flow_stage(key, message.partition)
                slot = f"{message.topic}/{message.partition}"
                positions[slot] = message.offset
                if stage.applied.get(slot, -1) >= message.offset:
                    stats.replayed += 1
                    continue
                record = await decoded(event)
                if record is not None:
                    time_ns, failure = call_core(FlowStage.event_time_ns, kind, record)
                    if failure is not None:  # before the clock sees it: an absurd time would make the partition's records late
                        await dead_letter(event, failure.reason, failure.detail, failure)
                    elif not flow_clock.observe(slot, time_ns):
                        stats.late[kind] += 1
                        await dead_letter(event, "LATE", f"event time {time_ns} is before the watermark minus the allowed lateness")
                    else:
                        stage, spans, failure = flow_record(stage, kind, record, options.stages)
                        if failure is not None:
                            flows[key] = (flows[key][0], stage)  # as before the record
                            await dead_letter(event, failure.reason, failure.detail, failure)
                        for span in spans:
                            outbox.route(Routed(CONVERSATION, conversation_of(span), ("span", span)))
                        if kind == "lifecycle" and failure is None:
                            for route in lifecycle_routes(record):
                                outbox.route(route)
                stage.applied[slot] = message.offset
                touched.add(key)
            schedule(touched)
            marks = await partition_marks()
            held = [m for m in marks.values() if m is not None]
            await advance_flows(min(held) if held else flow_clock.watermark_ns, touched, outbox)
            # after the spans: the conversation stage judges them by the time before this batch, as Flink's watermarks
            for slot, mark in sorted(marks.items()):
                outbox.everywhere(CONVERSATION, StageItem("watermark", slot, mark))
            await send_outbox(outbox)
            persist_flows(touched)

    @app.agent(resources)
    async def resources_agent(stream: faust.StreamT) -> None:
        """Workload tags to every partition of the stages that tag (Flink's broadcast state)."""
        async for events in stream.take_events(options.batch_events, within=options.batch_within_s):
            outbox = Outbox(partitions)
            for event in await guard.admit_all(events):
                stats.consumed["resource"] += 1
                positions[f"{event.message.topic}/{event.message.partition}"] = event.message.offset
                resource_id = (event.message.key or b"").decode(errors="replace")
                record = None if event.message.value is None else await decoded(event)
                if event.message.value is not None and record is None:
                    continue  # dead-lettered
                for kind in (CONVERSATION, SERIES):
                    outbox.everywhere(kind, StageItem("resource", record["resource_id"] if record else resource_id, record))
            await send_outbox(outbox)

    # stages 2 to 4: per conversation, process and series --------------------------------------------------
    def hop_agent(kind: str) -> None:
        hop = hops[kind]

        async def agent(stream: faust.StreamT) -> None:
            async for events in stream.take_events(options.batch_events, within=options.batch_within_s):
                last_input[kind], flushed[kind] = time.monotonic(), False
                admitted = await guard.admit_all(events)
                for event in admitted:
                    if not isinstance(event, Refilled):
                        hop.events.note(event)
                    positions[f"{event.message.topic}/{event.message.partition}"] = event.message.offset
                outbox = Outbox(partitions)
                routed = await hop.batch(admitted, outbox)
                await send_outbox(outbox)
                await emit(routed)
                hop.save()

        agent.__name__ = agent.__qualname__ = f"{kind}_agent"
        app.agent(hop_topics[kind], name=f"{kind}_agent")(agent)

    for kind in KEYED_STAGES:
        hop_agent(kind)
    agent_inputs = {*topic_kind, RESOURCES.full_name(prefix), *(topic.get_topic_name() for topic in hop_topics.values())}

    def caught_up(topics: Any) -> bool:
        """No record left to read in this worker's partitions of these topics: an agent that did not get a batch
        for a while because the event loop was busy elsewhere (a long batch of the other agent) is not idle."""
        return all(records_left(tp) in (0, None) for tp in app.consumer.assignment() if tp.topic in topics)

    @app.timer(interval=1.0)
    async def idle_flush() -> None:
        """Event time stands still without input: after idle_flush_s without a record, and none left to read,
        time out open requests and emit what waits, a stage at a time (each after the one before it)."""
        await guard.seek_quiet_ends([tp for tp in app.consumer.assignment() if tp.topic in agent_inputs], records_left, app.consumer.seek)
        now = time.monotonic()
        if not flushed[FLOW] and now - last_input[FLOW] >= options.idle_flush_s and caught_up(topic_kind):
            flushed[FLOW] = True
            touched: set[bytes] = set()
            outbox = Outbox(partitions)
            await advance_flows(flow_clock.max_seen_ns + options.stages.flush_horizon_ns, touched, outbox)
            await send_outbox(outbox)
            persist_flows(touched)
        for kind, before in ((CONVERSATION, (FLOW,)), (PROCESS, (CONVERSATION,)), (SERIES, (FLOW, CONVERSATION))):
            hop = hops[kind]
            if flushed[kind] or not all(flushed[b] for b in before) or now - last_input[kind] < options.idle_flush_s \
                    or not caught_up({hop_topics[kind].get_topic_name()}):
                continue
            flushed[kind] = True
            if hop.open_work:
                outbox = Outbox(partitions)
                routed = await hop.flush(outbox)
                log.info("idle flush stage=%s routed=%d outputs=%d", kind, sum(map(len, outbox.items.values())), len(routed))
                await send_outbox(outbox)
                await emit(routed)
                hop.save()

    # operability ----------------------------------------------------------------------------------------------
    @app.page("/tracetap/stats/")
    async def stats_page(web: Any, request: Any) -> Any:
        lag = {}
        for tp in app.consumer.assignment() if app.consumer else ():
            if tp.topic not in agent_inputs:
                continue
            left = records_left(tp)
            if left is not None:
                lag[f"{tp.topic}/{tp.partition}"] = left
        elapsed = max(time.monotonic() - stats.started, 1e-9)
        late = Counter(stats.late)
        for kind, name in _LATE.items():
            if hops[kind].late:
                late[name] += hops[kind].late
        counters = KeyedCounters()
        for hop in hops.values():
            counters.add(hop.counters)
        return web.json({
            "consumed": dict(stats.consumed), "consumed_per_s": sum(stats.consumed.values()) / elapsed,
            "produced": dict(stats.produced), "dead_letters": dict(stats.dead_letters), "late": dict(late),
            "replayed_skipped": stats.replayed + sum(hop.replayed for hop in hops.values()),
            "recovered_flow_states": stats.recovered_flow_states, "lag": lag, "offset_gaps": stats.offset_gaps, "offset_gaps_unfilled": stats.offset_gaps_unfilled, "positions": dict(positions),
            "tables": {"flow-stages": len(flows), **{f"{kind}-stages": len(hop.held) for kind, hop in hops.items()},
                       "pending_spans": hops[CONVERSATION].waiting + hops[PROCESS].waiting, "open_red_windows": hops[SERIES].waiting},
            "keyed_stages": asdict(counters),
        })

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        log.info("rebalance: partitions revoked count=%d", len(revoked))

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        flows.clear()  # the worker's view is rebuilt from the tables, which recovery fills from the changelogs
        deadlines.clear()
        unsaved.clear()
        guard.forget()
        flow_events.forget()
        for hop in hops.values():
            hop.events.forget()
        log.info("partitions assigned count=%d partitions=%s", len(assigned), sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))

    @app.on_rebalance_complete.connect
    async def on_rebalance_complete(sender: Any, **kwargs: Any) -> None:
        stats.recovered_flow_states = len(flow_table.data)
        for key, blob in list(flow_table.data.items()):  # each recovered flow's next deadline, as its timer: a quiet
            try:  # flow's open requests time out without a new record (one not decodable is reported when it is read)
                partition, stage = decode_flow(blob, options.stages)
            except UndecodableState:
                continue
            if partition is not None and key not in flows:
                flows[key] = (partition, stage)
        schedule(set(flows))
        for hop in hops.values():
            await hop.recover()
        guard.ready()
        log.info("rebalance complete; tables recovered flow_states=%d %s", len(flow_table.data),
                 " ".join(f"{kind}_states={len(hop.held)}" for kind, hop in hops.items()))

    return app, stats
