"""On-CPU and off-CPU profiles of the node's threads, as folded stacks per process and window.

The kernel side (profile.c) counts, per (process, thread, user stack, kernel stack), the `cpu-clock` samples taken
while the thread ran (on-CPU, SAMPLE_HZ per CPU) and the nanoseconds it spent blocked in that stack (off-CPU, from
sched:sched_switch, blocks of at least `min_block_ms`). Once per window `collect()` takes both maps (read and
cleared in one batch operation), symbolises the stacks with bcc's symbol caches (ELF symbols of each process's
binaries and libraries, /proc/kallsyms for the kernel) and returns one `ProcessProfile` per process and kind.

A folded stack is root first, frames joined by ";", as Brendan Gregg's flamegraph.pl reads it: the thread's comm,
then user frames (`function` or `function [module]` when the module is not the executable), then kernel frames
suffixed `_[k]`. A stack the kernel could not walk is one frame, `[unknown]`. Symbols are read from each process's
maps, so a process that exits before its window is read keeps its addresses unnamed (`[unknown]`).

Limits: user stacks are walked by frame pointers (bpf_get_stackid), so code built without them (most distribution
libraries, -O2 without -fno-omit-frame-pointer) shows a short or broken user stack; CPython shows its interpreter's
C frames (`_PyEval_EvalFrameDefault`), not the Python functions (Python 3.12+ with `-X perf` writes a perf map that
would name them; 3.11 has none). Off-CPU time is counted when the thread runs again, in the window it wakes in.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

log = logging.getLogger("tracetap.agent.profiler")

ON_CPU, OFF_CPU = "ON_CPU", "OFF_CPU"
_STACK_ENTRIES = 16_384
_KEYS_MAX = 65_536
_THREADS_MAX = 65_536
_EFAULT = -14
_UNKNOWN = "[unknown]"


@dataclass
class ProcessProfile:
    """One process's stacks of one kind over one window: folded stack -> samples (ON_CPU) or nanoseconds (OFF_CPU),
    with the thread of each."""

    pid: int
    comm: str
    kind: str
    start_ns: int  # CLOCK_REALTIME nanoseconds
    end_ns: int
    sample_hz: int
    stacks: dict[tuple[int, str], int] = field(default_factory=dict)  # (tid, folded stack) -> samples or ns

    def total(self) -> int:
        return sum(self.stacks.values())

    def by_frame(self, frame: str) -> int:
        """The samples (or ns) of stacks that hold this frame (a function name, its module suffix ignored)."""
        return sum(n for (_, folded), n in self.stacks.items() if any(f.split(" [")[0] == frame for f in folded.split(";")))


class Profiler:
    """The loaded profile.c: `collect()` once per window. `sample_hz` on-CPU samples per second per CPU."""

    def __init__(self, sample_hz: int = 99, min_block_ms: float = 1.0, exclude_pids: set[int] | None = None) -> None:
        from bcc import BPF, PerfSWConfig, PerfType  # Debian's python3-bpfcc, linked into the venv

        defines = {"STACK_ENTRIES": _STACK_ENTRIES, "KEYS_MAX": _KEYS_MAX, "THREADS_MAX": _THREADS_MAX,
                   "MIN_BLOCK_NS": f"{int(min_block_ms * 1_000_000)}ULL"}
        source = resources.files("producers.ebpf").joinpath("profile.c").read_text()
        self.bpf = BPF(text=source, cflags=[f"-D{k}={v}" for k, v in defines.items()])
        excluded = self.bpf["excluded_pids"]
        for pid in {os.getpid(), *(exclude_pids or ())}:
            excluded[ctypes.c_uint32(pid)] = ctypes.c_uint8(1)
        self.bpf.attach_perf_event(ev_type=PerfType.SOFTWARE, ev_config=PerfSWConfig.CPU_CLOCK, fn_name=b"on_cpu", sample_freq=sample_hz)
        self.sample_hz = sample_hz
        self._window_start = time.time_ns()
        self._frames: dict[tuple[int, int], str] = {}  # (pid or -1 for the kernel, address) -> frame
        self._executables: dict[int, str] = {}
        log.info("profiler loaded sample_hz=%d min_block_ms=%.1f", sample_hz, min_block_ms)

    def collect(self) -> list[ProcessProfile]:
        """Everything counted since the last call, per process and kind; the maps and the stacks start afresh."""
        end = time.time_ns()
        samples = self._take("on_cpu_samples")
        blocked = self._take("off_cpu_ns")
        profiles: dict[tuple[int, str], ProcessProfile] = {}
        for kind, counted in ((ON_CPU, samples), (OFF_CPU, blocked)):
            for key, value in counted:
                comm = key.comm.decode(errors="replace")
                profile = profiles.get((key.pid, kind))
                if profile is None:
                    profile = profiles[(key.pid, kind)] = ProcessProfile(key.pid, comm, kind, self._window_start, end, self.sample_hz)
                folded = self._fold(comm, key.pid, key.user_stack, key.kernel_stack)
                profile.stacks[(key.tid, folded)] = profile.stacks.get((key.tid, folded), 0) + value
        self.bpf["stacks"].clear()  # ids are only valid until the map is cleared: after folding
        if len(self._frames) > 1_000_000:
            self._frames.clear()
            self._executables.clear()
            self.bpf._sym_caches.clear()  # bcc keeps one per process it symbolised: exited ones would pile up
        self._window_start = end
        return list(profiles.values())

    def lost(self) -> dict[str, int]:
        table = self.bpf["lost"]
        return {"profile_samples_lost": table[ctypes.c_int(0)].value, "profile_blocks_lost": table[ctypes.c_int(1)].value}

    def close(self) -> None:
        self.bpf.cleanup()

    def _take(self, name: str) -> list[tuple[Any, int]]:
        table = self.bpf[name]
        try:
            items = list(table.items_lookup_and_delete_batch())
        except Exception:  # kernels before 5.6 have no batch operations: read, then clear
            items = list(table.items())
            table.clear()
        return [(k, getattr(v, "value", v)) for k, v in items]

    def _fold(self, comm: str, pid: int, user_stack: int, kernel_stack: int) -> str:
        frames = [comm]
        frames += reversed(self._walk(user_stack, pid)) if user_stack >= 0 else ([] if user_stack == _EFAULT else [_UNKNOWN])
        if kernel_stack >= 0:
            frames += [f"{f}_[k]" for f in reversed(self._walk(kernel_stack, -1))]
        return ";".join(frames)

    def _walk(self, stack_id: int, pid: int) -> list[str]:
        """Leaf first."""
        out = []
        for address in self.bpf["stacks"].walk(stack_id):
            frame = self._frames.get((pid, address))
            if frame is None:
                frame = self._frames[(pid, address)] = self._symbol(address, pid)
            out.append(frame)
        return out

    def _symbol(self, address: int, pid: int) -> str:
        if pid < 0:
            return self.bpf.ksym(address).decode(errors="replace")
        name = self.bpf.sym(address, pid, show_module=True).decode(errors="replace")
        if name.startswith("[unknown]"):  # "[unknown] [module]": keep the module, it says where
            return name.replace("[unknown] ", "", 1) if " [" in name else _UNKNOWN
        function, _, module = name.partition(" [")
        return function if module[:-1] == self._executable(pid) else name  # the program's own functions need no module

    def _executable(self, pid: int) -> str:
        known = self._executables.get(pid)
        if known is None:
            try:
                known = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
            except OSError:
                known = ""
            self._executables[pid] = known
        return known


def merge(profiles: list[ProcessProfile]) -> dict[str, int]:
    """Folded stack -> total, over several windows or processes (what a flame graph draws)."""
    total: dict[str, int] = defaultdict(int)
    for profile in profiles:
        for (_, folded), n in profile.stacks.items():
            total[folded] += n
    return dict(total)
