"""The keyed stages in one process, routed as an engine routes them: the reference the engines are tested
against, what the benchmarks time as "the core alone", and what an engine hosts as one operator where it
does not (yet) route the stages through its own keyed streams.

Each stage is kept per key and advanced only when its next deadline has come (a heap of deadlines), so an
advance costs what is due, not the number of keys. The watermark is the engine's (`engine_watermark`).
"""

from __future__ import annotations

import heapq
from dataclasses import asdict
from typing import Any

from tracetap.keyed import (ALERTS, CONVERSATION, NETWORK, PATHS, PROCESS, RED, SERIES, SPANS, ConversationStage, KeyedCounters,
                            ProcessStage, Routed, SeriesStage, advance_stage, apply_item, conversation_of, lifecycle_routes)
from tracetap.errors import UndecodableState
from tracetap.model import Span
from tracetap.stages import Emitted, StageConfig
from tracetap.workloads import WorkloadIndex

_OUTPUTS = {SPANS: "spans", PATHS: "paths", RED: "red", NETWORK: "network", ALERTS: "alerts"}  # Emitted's lists
_ORDER = (CONVERSATION, PROCESS, SERIES)  # an advance runs the stages in the order records flow through them


class KeyedPipeline:
    def __init__(self, config: StageConfig = StageConfig()) -> None:
        self.config = config
        self.workloads = WorkloadIndex()
        self.stages: dict[str, dict[str, Any]] = {CONVERSATION: {}, PROCESS: {}, SERIES: {}}
        self.watermark_ns = 0
        self.applied: dict[str, int] = {}  # input partition -> the last offset in this state (an engine's replay guard)
        self._due: dict[str, list[tuple[int, str]]] = {kind: [] for kind in _ORDER}  # heaps of (deadline, key)
        self._scheduled: dict[tuple[str, str], int] = {}  # (stage, key) -> the deadline pushed last
        self._out = Emitted()
        self.late_spans = 0
        self.late_lifecycle = 0
        self._retired = KeyedCounters()  # the counters of stages dropped once empty

    # input --------------------------------------------------------------------------------------------
    def resource(self, resource_id: str, record: dict[str, Any] | None) -> None:
        self.workloads.apply(resource_id, record)

    def engine_watermark(self, watermark_ns: int) -> None:
        """The engine's watermark; it never goes back."""
        self.watermark_ns = max(self.watermark_ns, watermark_ns)

    def span(self, span: Span) -> bool:
        """A span from the flow stage; False when it is late (the engine dead-letters it)."""
        key = conversation_of(span)
        stage = self._stage(CONVERSATION, key)
        on_time = stage.span(span, self.watermark_ns)
        self.late_spans += not on_time
        self._schedule(CONVERSATION, key, stage)
        return on_time

    def lifecycle(self, record: dict[str, Any]) -> bool:
        on_time = True
        for route in lifecycle_routes(record):
            on_time = self._deliver(route) and on_time
        self.late_lifecycle += not on_time
        return on_time

    # output -------------------------------------------------------------------------------------------
    def advance(self, final: bool = False) -> Emitted:
        """Advance every stage with work due at the watermark (every stage when `final`: an end of input, or an
        idle flush), in flow order."""
        for kind in _ORDER:
            if final:
                keys = sorted(self.stages[kind])
                self._due[kind].clear()
            else:
                keys = self._pop_due(kind)
            for key in keys:
                stage = self.stages[kind].get(key)
                if stage is None:
                    continue
                routed = advance_stage(kind, stage, self.watermark_ns, self.workloads, final)
                for route in routed:
                    self._deliver(route)
                if stage.empty:
                    self._retired.add(stage.counters)
                    del self.stages[kind][key]
                    self._scheduled.pop((kind, key), None)
                else:
                    self._schedule(kind, key, stage)
        out, self._out = self._out, Emitted()
        return out

    @property
    def counters(self) -> KeyedCounters:
        total = KeyedCounters()  # the stages count their late records too
        total.add(self._retired)
        for stages in self.stages.values():
            for stage in stages.values():
                total.add(stage.counters)
        return total

    @property
    def open_keys(self) -> dict[str, int]:
        return {kind: len(stages) for kind, stages in self.stages.items()}

    @property
    def has_open_work(self) -> bool:
        """Spans waiting, or windows not closed yet: a final advance would emit something."""
        return any(stage.open_work for stages in self.stages.values() for stage in stages.values())

    @property
    def waiting_spans(self) -> int:
        return sum(s.waiting for kind in (CONVERSATION, PROCESS) for s in self.stages[kind].values())

    @property
    def open_windows(self) -> int:
        return sum(s.waiting for s in self.stages[SERIES].values())

    # state --------------------------------------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        """JSON-ready data: every key's stage, the workloads, the watermark and the offsets applied."""
        return {"watermark": self.watermark_ns, "workloads": self.workloads.to_state(), "applied": dict(self.applied),
                "late": [self.late_spans, self.late_lifecycle], "retired": asdict(self._retired),
                "stages": {kind: {key: stage.to_state() for key, stage in stages.items()} for kind, stages in self.stages.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any], config: StageConfig) -> KeyedPipeline:
        """The pipeline of `to_state`; UndecodableState when the data is not one."""
        try:
            pipeline = cls(config)
            pipeline.watermark_ns = int(state["watermark"])
            pipeline.workloads.load_state(state["workloads"])
            pipeline.applied = {str(k): int(v) for k, v in state["applied"].items()}
            pipeline.late_spans, pipeline.late_lifecycle = (int(n) for n in state["late"])
            pipeline._retired = KeyedCounters(**state["retired"])
            for kind, make in ((CONVERSATION, ConversationStage), (PROCESS, ProcessStage), (SERIES, SeriesStage)):
                for key, stage_state in state["stages"][kind].items():
                    stage = pipeline.stages[kind][str(key)] = make.from_state(stage_state, config)
                    pipeline._schedule(kind, str(key), stage)
            return pipeline
        except UndecodableState:
            raise
        except Exception as exc:
            raise UndecodableState(f"not the keyed stages' state: {type(exc).__name__}: {exc}") from None

    # routing ------------------------------------------------------------------------------------------
    def _deliver(self, route: Routed) -> bool:
        field = _OUTPUTS.get(route.to)
        if field is not None:
            getattr(self._out, field).append(route.item)
            return True
        stage = self._stage(route.to, route.key)
        on_time = apply_item(route.to, stage, route.key, route.item, self.watermark_ns, self.workloads)
        self._schedule(route.to, route.key, stage)
        return on_time

    def _stage(self, kind: str, key: str) -> Any:
        stages = self.stages[kind]
        stage = stages.get(key)
        if stage is None:
            stage = stages[key] = {CONVERSATION: ConversationStage, PROCESS: ProcessStage, SERIES: SeriesStage}[kind](self.config)
        return stage

    def _schedule(self, kind: str, key: str, stage: Any) -> None:
        due = stage.next_deadline_ns
        if due is not None and self._scheduled.get((kind, key)) != due:
            self._scheduled[(kind, key)] = due
            heapq.heappush(self._due[kind], (due, key))

    def _pop_due(self, kind: str) -> list[str]:
        heap, keys = self._due[kind], []
        while heap and heap[0][0] <= self.watermark_ns:
            due, key = heapq.heappop(heap)
            if self._scheduled.get((kind, key)) == due:
                del self._scheduled[(kind, key)]
                keys.append(key)
        return sorted(keys)
