"""Profiles read back from the profiles topic or index: which records a flame graph draws, and their stacks merged.

A `Selection` names a workload or a process (on a host), optionally one thread, a kind and a time range; `of_span`
builds one from a span (its host, process, thread and start..end), so a slow request selects the profile of the
thread that served it. Records are the topic's values (schemas/avro/profile.avsc) with their times as epoch
nanoseconds. A record covers a whole window (`agent.profile_window_s`), so a span selects every window it overlaps:
the stacks of its thread in those windows, the request's and whatever else the thread did in them. Off-CPU time is
counted when the thread wakes, so a block that ends within the span is in a window the span overlaps.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ON_CPU, OFF_CPU = "ON_CPU", "OFF_CPU"


@dataclass(frozen=True)
class Selection:
    kind: str
    start_ns: int
    end_ns: int
    workload: str | None = None
    host: str | None = None
    pid: int | None = None
    tid: int | None = None

    @classmethod
    def of_span(cls, span: dict[str, Any], kind: str) -> Selection:
        """The span's own thread over its time range (a process-side span: NIC spans have no process)."""
        if span.get("pid") is None:
            raise ValueError(f"span {span.get('span_id')} was seen at {span.get('tap_side')}: only process-side spans have a process")
        return cls(kind, span["start_time"], span["end_time"], host=span["host"], pid=span["pid"], tid=span.get("tid"))

    def admits(self, record: dict[str, Any]) -> bool:
        return (record["kind"] == self.kind and record["window_start"] <= self.end_ns and record["window_end"] >= self.start_ns
                and all(want is None or record[name] == want for name, want in
                        (("workload", self.workload), ("host", self.host), ("pid", self.pid))))


def value_field(kind: str) -> str:
    """The stack field a kind counts in: samples (ON_CPU) or nanoseconds (OFF_CPU)."""
    return "samples" if kind == ON_CPU else "off_cpu_ns"


def folded(records: Iterable[dict[str, Any]], selection: Selection) -> dict[str, int]:
    """Folded stack -> samples or nanoseconds, over the selected records (and thread)."""
    field = value_field(selection.kind)
    out: dict[str, int] = defaultdict(int)
    for record in records:
        if not selection.admits(record):
            continue
        for stack in record["stacks"]:
            if selection.tid is None or stack["tid"] == selection.tid:
                out[stack["stack"]] += stack[field]
    return {stack: value for stack, value in out.items() if value > 0}


_SYSCALL_ENTRY = ("entry_SYSCALL", "do_syscall_64", "x64_sys_call")


def where(stack: str, kind: str) -> str:
    """Where a stack's thread was: its last frame on-CPU; off-CPU, where it waited (its first kernel frame past the
    syscall entry, `__x64_sys_clock_nanosleep_[k]` say: the last frames are always the scheduler's)."""
    frames = stack.split(";")
    if kind == OFF_CPU:
        for frame in frames:
            if frame.endswith("_[k]") and not frame.startswith(_SYSCALL_ENTRY):
                return frame
    return frames[-1]


def hotspots(stacks: dict[str, int], kind: str, top: int = 10) -> list[tuple[str, int]]:
    """`where` the threads were, largest first: where the time went."""
    out: dict[str, int] = defaultdict(int)
    for stack, value in stacks.items():
        out[where(stack, kind)] += value
    return sorted(out.items(), key=lambda item: (-item[1], item[0]))[:top]
