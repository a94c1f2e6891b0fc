"""On-CPU and off-CPU profiles of the node's threads, as folded stacks per process and window.

The kernel side (profile.c) counts, per (process, thread, user stack, kernel stack), the `cpu-clock` samples taken
while the thread ran (on-CPU, SAMPLE_HZ per CPU) and, with `off_cpu`, the nanoseconds it spent blocked in that stack
(from sched:sched_switch, blocks of at least `min_block_ms`). Once per window `collect()` takes both maps (read and
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
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from producers.emitter import Emitter
from producers.resources import netns_names
from schemas.catalog import PROFILES
from tracetap.config import AgentSettings
from tracetap.profiles import OFF_CPU, ON_CPU

log = logging.getLogger("tracetap.agent.profiler")

__all__ = ["OFF_CPU", "ON_CPU", "ProcessProfile", "ProfileReporter", "Profiler", "merge"]

_STACK_ENTRIES = 16_384
_KEYS_MAX = 65_536
_THREADS_MAX = 65_536
_EFAULT = -14
_UNKNOWN = "[unknown]"
_TRUNCATED = "[truncated]"


def _stack_count(tid: int, folded: str, value: int, on_cpu: bool) -> dict[str, Any]:
    return {"tid": tid, "stack": folded, "leaf": folded.rsplit(";", 1)[-1], "samples": value if on_cpu else 0,
            "off_cpu_ns": 0 if on_cpu else value}


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

    def to_record(self, host: str, workload: str | None, netns_inode: int | None, min_block_ns: int,
                  max_stack_bytes: int = 256_000) -> dict[str, Any]:
        """The profiles topic's record: the stacks largest first, as many as fit in max_stack_bytes of stack text; the
        smallest rest are summed into one `<comm>;[truncated]` stack, so the totals hold and the record stays small."""
        on_cpu = self.kind == ON_CPU
        stacks, used, cut, cut_value = [], 0, 0, 0
        for (tid, folded), value in sorted(self.stacks.items(), key=lambda item: (-item[1], item[0])):
            used += len(folded)
            if cut or used > max_stack_bytes:
                cut, cut_value = cut + 1, cut_value + value
                continue
            stacks.append(_stack_count(tid, folded, value, on_cpu))
        if cut:
            stacks.append(_stack_count(0, f"{self.comm};{_TRUNCATED}", cut_value, on_cpu))
        total = self.total()
        return {"profile_id": f"{host}|{self.pid}|{self.kind}|{self.start_ns}", "kind": self.kind, "host": host, "pid": self.pid,
                "comm": self.comm, "workload": workload, "netns_inode": netns_inode, "window_start": self.start_ns,
                "window_end": self.end_ns, "sample_hz": self.sample_hz, "min_block_ns": min_block_ns,
                "total_samples": total if on_cpu else 0, "total_off_cpu_ns": 0 if on_cpu else total, "stacks": stacks,
                "truncated_stacks": cut}

    def by_frame(self, frame: str) -> int:
        """The samples (or ns) of stacks that hold this frame (a function name, its module suffix ignored)."""
        return sum(n for (_, folded), n in self.stacks.items() if any(f.split(" [")[0] == frame for f in folded.split(";")))


class Profiler:
    """The loaded profile.c: `collect()` once per window. `sample_hz` on-CPU samples per second per CPU."""

    def __init__(self, sample_hz: int = 99, min_block_ms: float = 1.0, exclude_pids: set[int] | None = None,
                 include_cgroups: set[int] | None = None, off_cpu: bool = True) -> None:
        from bcc import BPF, PerfSWConfig, PerfType  # Debian's python3-bpfcc, linked into the venv

        self.min_block_ns = int(min_block_ms * 1_000_000)
        self.off_cpu = off_cpu
        defines = {"STACK_ENTRIES": _STACK_ENTRIES, "KEYS_MAX": _KEYS_MAX, "THREADS_MAX": _THREADS_MAX,
                   "MIN_BLOCK_NS": f"{self.min_block_ns}ULL"}
        if include_cgroups:
            defines["CGROUP_FILTER"] = 1
        if off_cpu:
            defines["OFF_CPU"] = 1
        source = resources.files("producers.ebpf").joinpath("profile.c").read_text()
        self.bpf = BPF(text=source, cflags=[f"-D{k}={v}" for k, v in defines.items()])
        excluded = self.bpf["excluded_pids"]
        for pid in {os.getpid(), *(exclude_pids or ())}:
            excluded[ctypes.c_uint32(pid)] = ctypes.c_uint8(1)
        for cgroup in include_cgroups or ():
            self.bpf["included_cgroups"][ctypes.c_uint64(cgroup)] = ctypes.c_uint8(1)
        self.bpf.attach_perf_event(ev_type=PerfType.SOFTWARE, ev_config=PerfSWConfig.CPU_CLOCK, fn_name=b"on_cpu", sample_freq=sample_hz)
        self.sample_hz = sample_hz
        self._window_start = time.time_ns()
        self._frames: dict[tuple[int, int], str] = {}  # (pid or -1 for the kernel, address) -> frame
        self._executables: dict[int, str] = {}
        log.info("profiler loaded sample_hz=%d off_cpu=%s min_block_ms=%.1f", sample_hz, off_cpu, min_block_ms)

    def collect(self) -> list[ProcessProfile]:
        """Everything counted since the last call, per process and kind; the maps and the stacks start afresh."""
        end = time.time_ns()
        samples = self._take("on_cpu_samples")
        blocked = self._take("off_cpu_ns") if self.off_cpu else []
        profiles: dict[tuple[int, str], ProcessProfile] = {}
        for kind, counted in ((ON_CPU, samples), (OFF_CPU, blocked)):
            for key, value in counted:
                comm = key.comm.decode(errors="replace")
                profile = profiles.get((key.pid, kind))
                if profile is None:
                    profile = profiles[(key.pid, kind)] = ProcessProfile(key.pid, comm, kind, self._window_start, end, self.sample_hz)
                folded = self._fold(comm, key.pid, key.user_stack, key.kernel_stack)
                profile.stacks[(key.tid, folded)] = profile.stacks.get((key.tid, folded), 0) + value
        self._clear_stacks()
        self._forget_exited()
        self._window_start = end
        return list(profiles.values())

    def _clear_stacks(self) -> None:
        """Empty the stack map after folding (bcc's StackTrace.clear() does nothing), but for the stacks threads asleep
        now were taken in: their blocks are counted, with those ids, when they wake. A full map would give new stacks
        no id (`[unknown]`)."""
        held: set[int] = set()
        if self.off_cpu:
            held = {i for b in self.bpf["blocked_at"].values() for i in (b.user_stack, b.kernel_stack)}
        table = self.bpf["stacks"]
        for key in list(table.keys()):
            if key.value not in held:
                try:
                    del table[key]
                except KeyError:
                    pass

    def _forget_exited(self) -> None:
        """Symbols of processes that have exited: bcc keeps a native symbol cache per process and never frees it."""
        from bcc import BPF
        from bcc.libbcc import lib

        gone = [pid for pid in self._executables if not os.path.exists(f"/proc/{pid}")]
        for pid in gone:
            del self._executables[pid]
            cache = BPF._sym_caches.pop(pid, None)
            if cache is not None:
                lib.bcc_free_symcache(cache.cache, pid)
        if len(self._frames) > 1_000_000:
            self._frames = {}
        elif gone:
            exited = set(gone)
            self._frames = {k: v for k, v in self._frames.items() if k[0] not in exited}

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
        try:
            addresses = list(self.bpf["stacks"].walk(stack_id))
        except KeyError:  # a stack id taken just as the map was emptied
            return [_UNKNOWN]
        for address in addresses:
            frame = self._frames.get((pid, address))
            if frame is None:
                frame = self._frames[(pid, address)] = self._symbol(address, pid)
            out.append(frame)
        return out

    def _symbol(self, address: int, pid: int) -> str:
        if pid < 0:
            return self.bpf.ksym(address).decode(errors="replace")
        name = self.bpf.sym(address, pid, show_module=True).decode(errors="replace")
        if name.startswith("[unknown]"):  # "[unknown] [module]": keep the module, it says where ("[vdso]" as such)
            module = name[len("[unknown] ["):-1] if name.startswith("[unknown] [") else ""
            return (module if module.startswith("[") else f"[{module}]") if module else _UNKNOWN
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


class ProfileReporter:
    """The eBPF agent's profiling thread: every `agent.profile_window_s`, collect, keep the processes the agent's
    filters let in (pids and cgroups in the kernel; network namespaces and comms here, from /proc), tag each with its
    workload, and send one record per process and kind to the profiles topic. `stop()` sends the last window."""

    def __init__(self, agent: AgentSettings, emitter: Emitter, host: str, include_cgroups: set[int]) -> None:
        self._profiler = Profiler(agent.profile_hz, agent.profile_min_block_ms, exclude_pids={os.getpid(), *agent.exclude_pids},
                                  include_cgroups=include_cgroups, off_cpu=agent.profile_off_cpu)
        self._emitter, self._host, self._window_s = emitter, host, agent.profile_window_s
        self._netns = {int(n) if n.isdigit() else n for n in agent.include_netns}  # inodes, or names resolved per window
        self._comms = {c[:15] for c in agent.exclude_comms}
        self._lost: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="profiler", daemon=True)
        self.records = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Send the last window. The programs stay attached until the agent exits: detaching the sched_switch
        tracepoint waits for every task to pass an RCU quiescent state, which took up to a minute on a busy node."""
        self._stop.set()
        self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.wait(self._window_s):
            self._report_safely()
        self._report_safely()  # the last window, up to the stop

    def _report_safely(self) -> None:
        try:
            self.report()
        except Exception as exc:  # profiles are best effort; capture goes on
            self._emitter.count("profile_errors")
            log.warning("profile window not reported error=%s", exc)

    def report(self) -> int:
        """Collect one window and send it; returns how many records were sent."""
        started = time.monotonic()
        profiles = self._profiler.collect()
        names = netns_names()
        sent = 0
        for profile in profiles:
            netns = _netns_of(profile.pid)
            if not self._admits(profile, netns, names):
                continue
            record = profile.to_record(self._host, names.get(netns) if netns else None, netns, self._profiler.min_block_ns)
            self._emitter.offer(PROFILES, f"{self._host}|{profile.pid}", record)
            sent += 1
        for name, value in self._profiler.lost().items():
            if value > self._lost.get(name, 0):
                self._emitter.count(name, value - self._lost.get(name, 0))
                self._lost[name] = value
        self.records += sent
        log.debug("profile window processes=%d records=%d took_ms=%.0f", len({p.pid for p in profiles}), sent,
                  (time.monotonic() - started) * 1000)
        return sent

    def _admits(self, profile: ProcessProfile, netns: int | None, names: dict[int, str]) -> bool:
        if profile.comm[:15] in self._comms:
            return False
        if not self._netns:
            return True
        return netns is not None and (netns in self._netns or names.get(netns) in self._netns)


def _netns_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None  # gone: its namespace cannot be told any more
