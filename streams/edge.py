"""What both engines do around the core, written once: the stages' state and what goes from one stage to
the next as data-only bytes (JSON of the core's `to_state`, never pickle: these bytes come back from topics
and checkpoints), and the guard around each call into the core, which turns any exception into a dead-letter
description and puts the flow's stage back as it was before the record.
"""

from __future__ import annotations

import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import orjson

import tracetap
from tracetap.errors import TracetapError, UndecodableState
from tracetap.model import Span, span_from_state, span_to_state
from tracetap.keyed import CONVERSATION, PROCESS, SERIES, ConversationStage, ProcessStage, SeriesStage
from tracetap.stages import FlowStage, StageConfig

STATE_VERSION = 1  # the first element of every encoded state and batch; another version is refused, not guessed at
_CORE = Path(tracetap.__file__).resolve().parent


# state ------------------------------------------------------------------------------------------------
def encode_flow(stage: FlowStage, partition: int | None = None) -> bytes:
    """A flow's stage (and the input partition an engine keeps it for) as bytes."""
    return orjson.dumps([STATE_VERSION, partition, stage.to_state()])


def decode_flow(blob: bytes, config: StageConfig) -> tuple[int | None, FlowStage]:
    """(partition, stage) of `encode_flow`; UndecodableState for any other bytes."""
    version, partition, state = _versioned(blob, 3)
    if partition is not None and type(partition) is not int:
        raise UndecodableState(f"partition {partition!r} is not a number")
    return partition, FlowStage.from_state(state, config)


def encode_keyed(stage: Any, applied: int) -> bytes:
    """One key's conversation, process or series stage, and the last offset of its input partition applied to it."""
    return orjson.dumps([STATE_VERSION, applied, stage.to_state()])


def decode_keyed(kind: str, blob: bytes, config: StageConfig) -> tuple[int, Any]:
    """(applied offset, stage) of `encode_keyed` (`kind`: conversation, process or series); UndecodableState for other bytes."""
    _, applied, state = _versioned(blob, 3)
    if type(applied) is not int:
        raise UndecodableState(f"offset {str(applied)[:20]!r} is not a number")
    return applied, _KEYED[kind].from_state(state, config)


def encode_data(state: Any) -> bytes:
    """JSON-ready data (an engine's own bookkeeping, as a partition's watermarks) as versioned bytes."""
    return orjson.dumps([STATE_VERSION, state])


def decode_data(blob: bytes) -> Any:
    """The data of `encode_data`, for its owner to check; UndecodableState when the bytes are not one."""
    return _versioned(blob, 2)[1]


def _versioned(blob: bytes, size: int) -> list[Any]:
    try:
        data = orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        raise UndecodableState(f"not JSON ({len(blob)} bytes, starting {bytes(blob[:12])!r}): {exc}") from None
    if not isinstance(data, list) or len(data) != size or data[0] != STATE_VERSION:
        raise UndecodableState(f"not a version {STATE_VERSION} record of {size} fields")
    return data


_KEYED: dict[str, Any] = {CONVERSATION: ConversationStage, PROCESS: ProcessStage, SERIES: SeriesStage}
FLOW = "flow"


def encode_bucket(stages: dict[str, Any]) -> bytes:
    """The stages of one bucket of keys (key -> a flow, conversation, process or series stage) as bytes,
    compressed: an engine that keys its state by bucket (the Flink job) snapshots a bucket at a time."""
    return zlib.compress(orjson.dumps([STATE_VERSION, {key: stage.to_state() for key, stage in stages.items()}]), 1)


def decode_bucket(kind: str, blob: bytes, config: StageConfig) -> dict[str, Any]:
    """The stages of `encode_bucket` (`kind`: flow, conversation, process or series); UndecodableState for other bytes."""
    try:
        raw = zlib.decompressobj().decompress(blob, 1 << 30)  # bounded: a small blob may claim a huge expansion
    except zlib.error as exc:
        raise UndecodableState(f"not zlib data: {exc}") from None
    _, states = _versioned(raw, 2)
    if not isinstance(states, dict):
        raise UndecodableState("a bucket's stages are not a map of key to stage")
    make = FlowStage if kind == FLOW else _KEYED[kind]
    return {key: make.from_state(state, config) for key, state in states.items()}


# what goes from one keyed stage to the next -------------------------------------------------------------
def encode_routed(item: tuple[Any, ...]) -> bytes:
    """A `Routed` item for a stage (tracetap/keyed.py: a span, a span with its hop, a lifecycle event) as bytes."""
    return orjson.dumps([STATE_VERSION, *_routed_data(item)])


def decode_routed(blob: bytes) -> tuple[Any, ...]:
    """The item of `encode_routed`, checked for the types the stages rely on; UndecodableState for anything else."""
    try:
        data = orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        raise UndecodableState(f"not JSON ({len(blob)} bytes): {exc}") from None
    if not isinstance(data, list) or len(data) not in (3, 4) or data[0] != STATE_VERSION:
        raise UndecodableState(f"not a version {STATE_VERSION} item")
    return _routed_item(data[1:])


def _routed_data(item: tuple[Any, ...]) -> list[Any]:
    kind, value, *hop = item
    return [kind, span_to_state(value) if kind == "span" else value, *hop]


def _routed_item(data: list[Any]) -> tuple[Any, ...]:
    kind, value, *hop = data
    if kind == "span":
        span = span_from_state(value)
        if not hop:
            return ("span", span)
        segments, traced = (hop[0].get("segments"), hop[0].get("callee_traced")) if isinstance(hop[0], dict) else (None, None)
        if len(hop) != 1 or not isinstance(segments, dict) or type(traced) is not bool or not all(
                type(k) is str and type(v) in (int, float) for k, v in segments.items()):
            raise UndecodableState(f"not a span's hop: {str(hop[0])[:60]}")
        return ("span", span, {"segments": {k: float(v) for k, v in segments.items()}, "callee_traced": traced})
    if kind in ("lifecycle", "connect_failed") and not hop:
        _check(value, _LIFECYCLE_FIELDS, "lifecycle event")
        return (kind, value)
    raise UndecodableState(f"unknown item kind {str(kind)[:20]!r}")


# the private topics between the Faust job's stages -----------------------------------------------------
class StageItem(NamedTuple):
    """One entry of a record on a private topic between two of the Faust job's stages: an item for the
    stage of one key (`source`: that key; `value`: a `Routed` item, see tracetap/keyed.py), an upstream
    partition's watermark (`source`: which partition; `value` None while it is empty) or a workload tag
    (`source`: the resource id; `value` None for a tombstone)."""

    kind: str  # item | watermark | resource
    source: str
    value: Any


def encode_items(items: list[StageItem]) -> bytes:
    return orjson.dumps([STATE_VERSION, [[i.kind, i.source, _routed_data(i.value) if i.kind == "item" else i.value] for i in items]])


def decode_items(blob: bytes) -> list[StageItem]:
    """The items of `encode_items`, each checked for the types the stages rely on; UndecodableState for
    anything else."""
    _, raw = _versioned(blob, 2)
    if not isinstance(raw, list):
        raise UndecodableState("the items are not a list")
    items = []
    for entry in raw:
        if not isinstance(entry, list) or len(entry) != 3 or type(entry[1]) is not str:
            raise UndecodableState(f"not an item: {str(entry)[:60]}")
        kind, source, value = entry
        if kind == "item":
            if not isinstance(value, list) or len(value) not in (2, 3):
                raise UndecodableState(f"not a stage's item: {str(value)[:60]}")
            value = _routed_item(value)
        elif kind == "resource":
            if value is not None:
                _check(value, _RESOURCE_FIELDS, "resource tag")
        elif kind == "watermark":
            if value is not None and type(value) is not int:
                raise UndecodableState(f"not a partition's watermark: {str(entry)[:60]}")
        else:
            raise UndecodableState(f"unknown item kind {str(kind)[:20]!r}")
        items.append(StageItem(kind, source, value))
    return items


_INT, _STR, _INT_OR_NONE, _STR_OR_NONE = (int,), (str,), (int, type(None)), (str, type(None))
_LIFECYCLE_FIELDS = {"host": _STR, "time": _INT, "kind": _STR, "pid": _INT_OR_NONE, "socket_id": _INT_OR_NONE, "local_ip": _STR,
                     "local_port": _INT, "remote_ip": _STR, "remote_port": _INT, "role": _STR, "l4_protocol": _STR,
                     "srtt_us": _INT_OR_NONE, "bytes_sent": _INT_OR_NONE, "bytes_received": _INT_OR_NONE,
                     "error_code": _INT_OR_NONE, "error_name": _STR_OR_NONE}
_RESOURCE_FIELDS = {"resource_id": _STR, "kind": _STR, "host": _STR, "workload": _STR_OR_NONE, "pid": _INT_OR_NONE,
                    "netns_inode": _INT_OR_NONE, "netns_name": _STR_OR_NONE, "ip": _STR_OR_NONE}


def _check(record: Any, fields: dict[str, tuple[type, ...]], what: str) -> None:
    if not isinstance(record, dict):
        raise UndecodableState(f"a {what} is not a map")
    for name, types in fields.items():
        value = record.get(name)
        if type(value) not in types:
            raise UndecodableState(f"{what} field {name}: {type(value).__name__} is not of its type")


# the guard ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CoreFailure:
    """Why the core did not take a record: what an engine dead-letters and counts."""

    reason: str  # a DeadLetterReason: INVALID_RECORD (the core refused it, a TracetapError) or CORE_ERROR (any other exception)
    exception_type: str
    frame: str  # the last frame inside tracetap/, as `tracetap/assembly.py:123 in _messages`
    message: str

    @property
    def detail(self) -> str:
        return f"{self.exception_type}: {self.message} (at {self.frame})"


def failure_of(exc: BaseException) -> CoreFailure:
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if Path(f.filename).resolve().is_relative_to(_CORE)]
    last = (inside or frames)[-1] if frames else None
    if last is None:
        where = "?"
    else:
        path = Path(last.filename).resolve()
        name = path.relative_to(_CORE.parent) if path.is_relative_to(_CORE.parent) else path.name
        where = f"{name}:{last.lineno} in {last.name}"
    reason = "INVALID_RECORD" if isinstance(exc, TracetapError) else "CORE_ERROR"
    return CoreFailure(reason, type(exc).__name__, where, str(exc)[:500])


def call_core(method: Callable[..., Any], *args: Any) -> tuple[Any, CoreFailure | None]:
    """(what the core returned, None), or (None, the failure) for any exception it raised."""
    try:
        return method(*args), None
    except Exception as exc:  # the edge: whatever a record makes the core raise, the job goes on
        return None, failure_of(exc)


def flow_record(stage: FlowStage, kind: str, record: dict[str, Any], config: StageConfig) -> tuple[FlowStage, list[Span], CoreFailure | None]:
    """A raw record (kind: socket_data, packet or lifecycle) applied to its flow's stage, whole or not at all:
    on failure, the returned stage is the state before the record (its snapshot costs about 2 us)."""
    before = stage.to_state()
    spans, failure = call_core(getattr(stage, kind), record)
    if failure is None:
        return stage, spans, None
    return FlowStage.from_state(before, config), [], failure
