"""The keyed stages after the flow stage (tracetap/keyed.py) in the Faust job: one agent per stage, each
reading a private topic partitioned by the stage's key, with each key's stage in a Faust table.

    flow agent ─ spans, watermarks ─▶ streams.<app>.conversation ─▶ conversation agent ─┬▶ streams.<app>.process ─▶ process agent
         └──────── lifecycle events, failed connects ────────────────────────────────────┴▶ streams.<app>.series  ─▶ series agent
    resources agent ─ workload tags to every partition of the conversation and series topics

A sender gathers what it routes during a batch (`Outbox`) and writes one record per destination partition
(streams/edge.py's `encode_items`), so a record carries the items of many keys. A key always lands in the
same partition (`partition_of`), so its stage lives in that partition of the table and moves with it on a
rebalance. Each partition also keeps its own state under `_PARTITION_KEY`: the watermark each upstream
partition last sent, the workload tags, and the last offset applied to them.

Time flows as in Flink: every upstream partition sends its watermark to every downstream partition after
what it routed (the conversation stage's upstream is the raw partitions, the flow agent's; the process and
series stages' is the conversation stage's partitions), and a partition's watermark is the lowest of its
upstreams', once all have reported. Items of a record are judged by the watermark before it. After a
batch, the keys whose next deadline the watermark passed are advanced (a heap of deadlines per partition).

Outputs and routed items are acknowledged by Kafka before the state that produced them is written. Each
key's state records the last offset applied to it, so a worker killed at any point resumes without loss
and re-emits only records with the same ids.
"""

from __future__ import annotations

import heapq
import logging
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from streams.edge import StageItem, call_core, decode_data, decode_items, decode_keyed, encode_data, encode_items, encode_keyed
from tracetap.errors import UndecodableState
from tracetap.keyed import (CONVERSATION, PROCESS, SERIES, ConversationStage, KeyedCounters, ProcessStage, Routed, SeriesStage,
                            advance_stage, apply_item)
from tracetap.stages import StageConfig
from tracetap.workloads import WorkloadIndex

log = logging.getLogger("tracetap.streams.faust")

KEYED_STAGES = (CONVERSATION, PROCESS, SERIES)


def hop_topic(prefix: str, app_id: str, kind: str) -> str:
    """The private topic into a keyed stage: one per app (two apps on the same topics do not share it)."""
    return f"{prefix}streams.{app_id}.{kind}"

DOWNSTREAM = {CONVERSATION: (PROCESS, SERIES), PROCESS: (), SERIES: ()}
_MAKE = {CONVERSATION: ConversationStage, PROCESS: ProcessStage, SERIES: SeriesStage}
_PARTITION_KEY = b"\0partition"  # a partition's own state; stage keys never start with a NUL


def partition_of(key: str, partitions: int) -> int:
    """The partition of a stage's private topic (and table) that holds `key`: stable across runs and workers."""
    return zlib.crc32(key.encode()) % partitions


class Outbox:
    """What a batch routes to the keyed stages, by stage and partition: one record each when sent."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.items: dict[tuple[str, int], list[StageItem]] = defaultdict(list)

    def route(self, route: Routed) -> None:
        self.items[(route.to, partition_of(route.key, self.partitions))].append(StageItem("item", route.key, route.item))

    def everywhere(self, stage: str, item: StageItem) -> None:
        """To every partition of a stage: a watermark, a workload tag."""
        for partition in range(self.partitions):
            self.items[(stage, partition)].append(item)

    def __bool__(self) -> bool:
        return bool(self.items)


@dataclass(slots=True)
class HopPartition:
    """One partition of a keyed stage in this worker: its upstreams' watermarks, the workload tags it has
    seen (conversation and series), its own watermark (never back) and the last offset it applied."""

    applied: int = -1
    watermark_ns: int = 0
    marks: dict[str, int | None] = field(default_factory=dict)
    workloads: WorkloadIndex = field(default_factory=WorkloadIndex)
    sent_ns: int | None = None  # the watermark last sent downstream (not kept: a restart sends it again)
    due: list[tuple[int, str]] = field(default_factory=list)  # heap of (next deadline, key)

    def to_state(self) -> dict[str, Any]:
        return {"applied": self.applied, "watermark": self.watermark_ns, "marks": dict(self.marks), "workloads": self.workloads.to_state()}

    @classmethod
    def from_state(cls, state: Any) -> HopPartition:
        try:
            part = cls(int(state["applied"]), int(state["watermark"]))
            part.marks = {str(k): None if v is None else int(v) for k, v in state["marks"].items()}
            part.workloads.load_state(state["workloads"])
            return part
        except Exception as exc:
            raise UndecodableState(f"not a partition's state: {type(exc).__name__}: {exc}") from None

    def watermark(self, upstreams: list[str] | None) -> int | None:
        """The lowest watermark of the upstream partitions that hold time back; None until every one of them
        (`upstreams`, None while not known) has reported, or while all are empty."""
        if upstreams is None or any(source not in self.marks for source in upstreams):
            return None
        marks = [self.marks[source] for source in upstreams if self.marks[source] is not None]
        return min(marks) if marks else None


@dataclass(slots=True)
class _Held:
    partition: int
    stage: Any
    applied: int  # the last offset of its partition applied to this key's stage
    scheduled: int | None = None  # the deadline pushed last


class KeyedHop:
    """One keyed stage (conversation, process or series) in this worker: its live stages by key, its
    partitions' state, and what a batch, an advance and a flush do to them. The app gives it its table,
    the events that let table writes reach the right partition, the upstream partitions its time waits for,
    and `dead_letter`; what a batch routes on goes into an `Outbox`, what it emits is returned."""

    def __init__(self, kind: str, config: StageConfig, partitions: int, table: Any, events: Any,
                 upstreams: Callable[[], list[str] | None], dead_letter: Callable[..., Awaitable[None]]) -> None:
        self.kind, self.config, self.partitions = kind, config, partitions
        self.table, self.events = table, events  # events: streams.faust_app._PartitionEvents of this stage's topic
        self.upstreams, self.dead_letter = upstreams, dead_letter
        self.held: dict[str, _Held] = {}
        self.parts: dict[int, HopPartition] = {}
        self.unsaved: set[str] = set()  # keys changed while their partition had no event to write them under
        self.unsaved_parts: set[int] = set()
        self.late = 0
        self.replayed = 0
        self._retired = KeyedCounters()

    # input --------------------------------------------------------------------------------------------
    async def batch(self, events: list[Any], outbox: Outbox) -> list[Routed]:
        """The events' records applied, then the due keys advanced: their outputs for topics are returned,
        their items for later stages go into `outbox`. `save` writes the state after both are sent."""
        touched: set[str] = set()
        moved: set[int] = set()
        for event in events:
            message = event.message
            number, offset = message.partition, message.offset
            part = self.part(number)
            try:
                items = decode_items(message.value)
            except UndecodableState as exc:  # not this job's encoding: never unpickled, never run
                items = []
                await self.dead_letter(event, "UNDECODABLE_STATE", str(exc))
            fresh = part.applied < offset
            applying: set[str] = set()  # the keys this record is applied to (a key may have several items in it)
            for item in items:
                if item.kind == "item":
                    await self._item(event, number, item, part, touched, applying)
                elif not fresh:
                    self.replayed += 1
                elif item.kind == "watermark":
                    part.marks[item.source] = item.value
                else:
                    part.workloads.apply(item.source, item.value)
            if fresh:
                part.applied = offset
            watermark = part.watermark(self.upstreams())
            if watermark is not None and watermark > part.watermark_ns:  # the items of the next record are judged by it
                part.watermark_ns = watermark
                moved.add(number)
            self.unsaved_parts.add(number)
        routed = []
        for number in sorted(moved):
            routed += await self._advance(self._pop_due(number), touched)
        self.unsaved |= touched
        return self._sort(routed, outbox)

    async def _item(self, event: Any, number: int, item: StageItem, part: HopPartition, touched: set[str], applying: set[str]) -> None:
        key, offset = item.source, event.message.offset
        held = self.held.get(key)
        if key not in applying:
            if held is not None and held.applied >= offset:  # the state already holds this record (a replay)
                self.replayed += 1
                return
            applying.add(key)
        stage = held.stage if held is not None else _MAKE[self.kind](self.config)
        on_time, failure = call_core(apply_item, self.kind, stage, key, item.value, part.watermark_ns, part.workloads)
        if failure is not None:  # the stage methods check before they change anything: the stage is as it was
            await self.dead_letter(event, failure.reason, failure.detail, failure, encode_items([item]))
            return
        self.late += on_time is False
        if held is None:
            held = self.held[key] = _Held(number, stage, offset)
        held.applied = offset
        touched.add(key)
        self._schedule(key, held)

    # time ---------------------------------------------------------------------------------------------
    async def _advance(self, keys: list[str], touched: set[str], final: bool = False) -> list[Routed]:
        routed = []
        for key in keys:
            held = self.held.get(key)
            if held is None:
                continue
            part = self.part(held.partition)
            out, failure = call_core(advance_stage, self.kind, held.stage, part.watermark_ns, part.workloads, final)
            touched.add(key)
            if failure is not None:  # no record to blame: its state goes to the dead-letter topic, the key starts again
                await self.dead_letter(None, failure.reason, f"advance: {failure.detail}", failure,
                                       encode_keyed(held.stage, held.applied), key=key.encode())
                held.stage = _MAKE[self.kind](self.config)
                continue
            routed += out
            self._schedule(key, held)
        return routed

    def _schedule(self, key: str, held: _Held) -> None:
        due = held.stage.next_deadline_ns
        if due is not None and held.scheduled != due:
            held.scheduled = due
            heapq.heappush(self.part(held.partition).due, (due, key))

    def _pop_due(self, number: int) -> list[str]:
        part, keys = self.part(number), []
        while part.due and part.due[0][0] <= part.watermark_ns:
            due, key = heapq.heappop(part.due)
            held = self.held.get(key)
            if held is not None and held.scheduled == due:
                held.scheduled = None
                keys.append(key)
        return sorted(keys)

    async def flush(self, outbox: Outbox) -> list[Routed]:
        """Every key advanced as at the end of input (an idle flush)."""
        touched: set[str] = set()
        for part in self.parts.values():
            part.due.clear()
        for held in self.held.values():
            held.scheduled = None
        routed = await self._advance(sorted(self.held), touched, final=True)
        self.unsaved |= touched
        return self._sort(routed, outbox)

    def _sort(self, routed: list[Routed], outbox: Outbox) -> list[Routed]:
        """Items for later stages into the outbox, with this stage's new watermarks after them; the rest returned."""
        outputs = []
        for route in routed:
            if route.to in KEYED_STAGES:
                outbox.route(route)
            else:
                outputs.append(route)
        for number, part in sorted(self.parts.items()):
            if DOWNSTREAM[self.kind] and part.sent_ns != part.watermark_ns and part.watermark_ns:
                part.sent_ns = part.watermark_ns
                for stage in DOWNSTREAM[self.kind]:
                    outbox.everywhere(stage, StageItem("watermark", f"{self.kind}/{number}", part.watermark_ns))
        return outputs

    # state --------------------------------------------------------------------------------------------
    def part(self, number: int) -> HopPartition:
        part = self.parts.get(number)
        if part is None:
            part = self.parts[number] = HopPartition()
        return part

    def save(self) -> None:
        """Write the changed keys and partitions (table store and changelog), once what they sent is in Kafka.
        A write goes under an event of its partition; one with none yet waits for the next."""
        for key in sorted(self.unsaved):
            held = self.held.get(key)
            if held is None:
                self.unsaved.discard(key)
                continue
            with self.events.of(held.partition) as known:
                if not known:
                    continue
                self.unsaved.discard(key)
                if held.stage.empty:
                    self._retired.add(held.stage.counters)
                    del self.held[key]
                    self.table.pop(key.encode(), None)
                else:
                    self.table[key.encode()] = encode_keyed(held.stage, held.applied)
        for number in sorted(self.unsaved_parts):
            with self.events.of(number) as known:
                if known:
                    self.unsaved_parts.discard(number)
                    self.table[_PARTITION_KEY + str(number).encode()] = encode_data(self.part(number).to_state())

    async def recover(self) -> None:
        """This worker's view rebuilt from the table after a rebalance (recovery has filled it from the
        changelog): every key's stage, scheduled again, and each partition's state. A value that is not
        this job's encoding is dead-lettered and forgotten."""
        self.held.clear()
        self.parts.clear()
        self.unsaved.clear()
        self.unsaved_parts.clear()
        for raw_key, blob in list(self.table.data.items()):
            try:
                if raw_key.startswith(_PARTITION_KEY):
                    number = int(raw_key[len(_PARTITION_KEY):])
                    saved = HopPartition.from_state(decode_data(blob))
                    saved.due = self.part(number).due
                    self.parts[number] = saved
                    continue
                key = raw_key.decode()
                applied, stage = decode_keyed(self.kind, blob, self.config)
            except (UndecodableState, ValueError) as exc:
                # left in the table (its partition is not known here to write a tombstone under): each recovery reports it
                await self.dead_letter(None, "UNDECODABLE_STATE", str(exc), None, blob, key=raw_key,
                                       topic=self.table.changelog_topic.get_topic_name())
                continue
            held = self.held[key] = _Held(partition_of(key, self.partitions), stage, applied)
            self._schedule(key, held)

    # what the stats page shows -----------------------------------------------------------------------
    @property
    def counters(self) -> KeyedCounters:
        total = KeyedCounters()
        total.add(self._retired)
        for held in self.held.values():
            total.add(held.stage.counters)
        return total

    @property
    def open_work(self) -> bool:
        return any(held.stage.open_work for held in self.held.values())

    @property
    def waiting(self) -> int:
        """Spans waiting (conversation, process) or RED windows open (series) in this worker's keys."""
        return sum(held.stage.waiting for held in self.held.values())
