"""Benchmark: what the eBPF profiler (producers/ebpf/profiler.py, profile.c) costs on a busy node, as a share of one core.

Not a test (never run in CI, not collected by pytest). Needs root and gcc; no Kafka, no agent: a `Profiler` is loaded in
this process, as the agent loads it, and `collect()` is called once per window.

    .venv/bin/python benchmarks/profiler_overhead.py [--rounds 3] [--modes on-cpu@99,on+off-cpu@99,on-cpu@999]
                                                     [--seconds 10] [--window 10] [--switch-rate 20000] [--hogs N]
                                                     [--pairs 2] [--sleepers 4]

Modes (--modes, comma-separated): `on-cpu@HZ` is `Profiler(sample_hz=HZ, off_cpu=False)`, the cpu-clock program alone
(the agent's default is on-cpu@99: `agent.profile_hz = 99`, `agent.profile_off_cpu = false`); `on+off-cpu@HZ` is
`Profiler(sample_hz=HZ, off_cpu=True)`, which adds the sched:sched_switch program (it runs at every context switch of
the node, and walks both stacks at every one where a thread goes to sleep).

The busy node: a C program (compiled at run time into /tmp, -O2 -fno-omit-frame-pointer, so the profiler walks its
stacks) runs for the whole benchmark:
  hogs      one thread per CPU serving "requests": a dispatch recursion 3 to 10 frames deep over one of three leaves
            (encode + checksum a 1 KiB record, qsort of 256 integers through libc, a hashing loop), ~15 frames in all;
            both CPUs stay busy. Counts requests.
  pairs     thread pairs ping-ponging one byte over two pipes with a little work per message, paced: a burst of round
            trips every 5 ms, --switch-rate voluntary context switches per second in all (20,000 by default; a
            saturated nginx on this 2-core VM makes 50,000-80,000). Their blocks are far under 1 ms: the
            sched_switch program walks both stacks of every one and records none. Counts round trips.
  sleepers  threads doing one request then nanosleep(--sleep-us): blocks above the 1 ms threshold, recorded by stack.
            Counts wake-ups.
Its counters are in a shared file this script reads, so rounds need no restart.

Rounds alternate (order reversed every other round) between the baseline (no profiler loaded) and each mode. A
profiler round loads it (the bcc compile, untimed), waits 1 s and calls collect() once (the first call: the frames are
resolved, and in the first round the workload's symbols read; reported apart), then the measured --seconds, calling
collect() every --window seconds: the default is the agent's real 10 s window, so one steady-state collect() per round.
Every round ends with a short pinned phase: the busy program is stopped (SIGSTOP) and a second copy ping-pongs on CPU 0
alone for --pinned-seconds. Measured:
  a  the BPF programs' own time: kernel.bpf_stats_enabled=1 during the run (restored after), run_time_ns and run_cnt
     of each of the profiler's programs from /proc/self/fdinfo/<prog fd>; % of one core = run time / round wall time,
     and ns per invocation (the stats' own two clock reads included). Not included: the kernel's dispatch to the
     program (perf event overflow, the tracepoint's perf buffer), which (d) includes. The sched_switch program's
     cost is proportional to the switch rate: it is also printed per 10,000 switches/s.
  b  collect(): this thread's CPU time around each call (folding, emptying the stack map, forgetting exited
     processes' symbols), as % of one core at the window length (and the process's whole CPU time over the round, as
     a check).
  c  end to end: the workload's throughput (requests/s, round trips/s, wake-ups/s), profiler / baseline. It includes
     the indirect costs (stack walks, cache) but is noisy: on 2 shared cores +-2 % is common; converted to a share of a
     core as (1 - requests ratio) x the cores the hog threads used in the baseline.
  d  per context switch, end to end: the pinned ping-pong's ns per switch, mode - baseline (every switch there
     blocks: with off-CPU, both stack walks, the lookup and delete, the tracepoint's dispatch; on-CPU alone should add
     nothing); times the busy workload's switch rate it estimates the sched_switch hook's whole cost.
Total = a + b, the verdict's figure; c and d are the checks. The verdict is about the agent's default (on-CPU at 99 Hz,
or the first on-cpu mode given), with the on+off-cpu mode at the same rate beside it: its total, the sched_switch
program's runs/s (every context switch of the node) and the difference between the two per 10,000 switches/s.
Also per window: on-CPU samples, keys (the hash entries user space reads), off-CPU seconds, the workload's samples with
an unwalked user stack ([unknown]), off-CPU time recorded for the hog threads (which never sleep: 0, preempted
threads are not counted as blocked), the stack map's entries just after the round's last collect() (which empties it
but for the ids sleeping threads' blocked_at entries hold: near 0 on-CPU only), `profiler.lost()`, and the profiler's
load and close times (close() detaches: the kernel waits for an RCU grace period, which on this busy workload took up
to a minute with the sched_switch program attached). Progress goes to stderr, the summary to stdout.

Absolute numbers are noisy on a small shared machine: the "rest" column is CPU used by neither the workload nor this
process (another test run, say); rerun if it is not near 0. Other processes holding BPF programs are warned about.
"""

from __future__ import annotations

import argparse
import mmap
import os
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producers.ebpf.profiler import OFF_CPU, ON_CPU, Profiler  # noqa: E402
from tracetap.config import AgentSettings  # noqa: E402
from benchmarks.tls_probes import conditions, other_bpf_holders  # noqa: E402 (the same checks of the machine)

CLK_TCK = os.sysconf("SC_CLK_TCK")
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
SLOT = 64  # one cache line per thread in the counters file: (count, tid)
SETTLE_S = 1.0
PINNED_CPU = 0
BURST_NS = 5_000_000  # the paced pairs' period
LIMIT_PCT = 1.0

BUSY_C = r"""
// The busy node: hog threads (CPU work in a realistic stack), ping-pong pairs over pipes (voluntary switches), sleepers
// (nanosleep blocks over 1 ms). Each thread publishes (count, tid) in its 64-byte slot of the shared counters file.
//   busy COUNTERS HOGS PAIRS SLEEPERS SLEEP_US TRIPS   runs until killed; prints "ready". Each pair makes TRIPS round
//                                                      trips every BURST_NS (0: unpaced)
//   busy pinned SECONDS                                one unpaced pair on CPU 0; prints round trips, wall ns, switches
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct slot { uint64_t count, tid; char pad[48]; };
static struct slot *slots;
static volatile uint64_t sink;
static long sleep_ns, trips_per_burst;

static void hello(int i) { __atomic_store_n(&slots[i].tid, (uint64_t)syscall(SYS_gettid), __ATOMIC_RELAXED); }
static void publish(int i, uint64_t n) { __atomic_store_n(&slots[i].count, n, __ATOMIC_RELAXED); }
static long long now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000LL + t.tv_nsec; }

__attribute__((noinline)) uint64_t mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; return x ^ (x >> 33);
}
__attribute__((noinline)) uint64_t checksum(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}
__attribute__((noinline)) uint64_t encode(uint64_t seed, unsigned char *buf, size_t n) {
    for (size_t i = 0; i < n; i += 8) { uint64_t v = mix(seed + i); memcpy(buf + i, &v, 8); }
    return checksum(buf, n);
}
__attribute__((noinline)) uint64_t parse_record(uint64_t seed) { unsigned char buf[1024]; return encode(seed, buf, sizeof buf); }
static int by_value(const void *a, const void *b) { uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b; return (x > y) - (x < y); }
__attribute__((noinline)) uint64_t sort_batch(uint64_t seed) {
    uint32_t v[256];
    for (int i = 0; i < 256; i++) v[i] = (uint32_t)mix(seed + i);
    qsort(v, 256, sizeof v[0], by_value);
    return v[0] ^ v[255];
}
__attribute__((noinline)) uint64_t hash_loop(uint64_t seed) { for (int i = 0; i < 1500; i++) seed = mix(seed + i); return seed; }
__attribute__((noinline)) uint64_t leaf(uint64_t seed) {
    switch (seed % 3) { case 0: return parse_record(seed); case 1: return sort_batch(seed); default: return hash_loop(seed); }
}
__attribute__((noinline)) uint64_t dispatch(int depth, uint64_t seed) {
    if (depth <= 0) return leaf(seed);
    uint64_t r = dispatch(depth - 1, seed);
    sink += r;
    return r + 1;
}
__attribute__((noinline)) uint64_t handle_request(uint64_t seed) { seed = mix(seed); return dispatch(3 + (int)(seed % 8), seed); }

__attribute__((noinline)) void serve(int i) {
    for (uint64_t n = 0;;) { sink += handle_request(n ^ ((uint64_t)i << 40)); publish(i, ++n); }
}
static void *hog(void *arg) { int i = (int)(intptr_t)arg; hello(i); serve(i); return NULL; }

struct pair { int ab[2], ba[2], slot; };
__attribute__((noinline)) uint64_t exchange(struct pair *p, uint64_t n) {
    char c = 0;
    if (write(p->ab[1], &c, 1) != 1 || read(p->ba[0], &c, 1) != 1) _exit(3);
    return mix(n);
}
__attribute__((noinline)) void ping_loop(struct pair *p) {
    uint64_t n = 0;
    if (!trips_per_burst) {  // unpaced: as fast as the pair goes
        for (;;) { sink += exchange(p, n); publish(p->slot, ++n); }
    }
    long long next = now_ns();
    for (;;) {  // paced: a burst of round trips every BURST_NS (absolute: a late burst is caught up, not skipped)
        for (long k = 0; k < trips_per_burst; k++) { sink += exchange(p, n); publish(p->slot, ++n); }
        next += BURST_NS;
        if (next > now_ns()) {
            struct timespec t = {next / 1000000000LL, next % 1000000000LL};
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
        }
    }
}
__attribute__((noinline)) void pong_loop(struct pair *p) {
    char c;
    for (uint64_t n = 0;;) {
        if (read(p->ab[0], &c, 1) != 1) _exit(3);
        sink += mix(n);
        if (write(p->ba[1], &c, 1) != 1) _exit(3);
        publish(p->slot + 1, ++n);
    }
}
static void *ping(void *arg) { struct pair *p = arg; hello(p->slot); ping_loop(p); return NULL; }
static void *pong(void *arg) { struct pair *p = arg; hello(p->slot + 1); pong_loop(p); return NULL; }

__attribute__((noinline)) void nap(void) { struct timespec t = {sleep_ns / 1000000000L, sleep_ns % 1000000000L}; nanosleep(&t, NULL); }
static void *sleeper(void *arg) {
    int i = (int)(intptr_t)arg;
    hello(i);
    for (uint64_t n = 0;;) { sink += handle_request(n * 7919 + i); nap(); publish(i, ++n); }
    return NULL;
}

static void start(void *(*fn)(void *), void *arg) {
    pthread_t t;
    if (pthread_create(&t, NULL, fn, arg)) { perror("pthread_create"); exit(2); }
}

static struct pair *new_pair(int slot) {
    struct pair *p = calloc(1, sizeof *p);
    if (pipe(p->ab) || pipe(p->ba)) { perror("pipe"); exit(2); }
    p->slot = slot;
    return p;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "pinned")) {
        cpu_set_t cpus;
        CPU_ZERO(&cpus);
        CPU_SET(PINNED_CPU, &cpus);
        if (sched_setaffinity(0, sizeof cpus, &cpus)) { perror("sched_setaffinity"); return 2; }  // threads inherit it
        slots = calloc(2, sizeof *slots);
        struct rusage before, after;
        getrusage(RUSAGE_SELF, &before);
        long long t0 = now_ns();
        struct pair *p = new_pair(0);
        start(ping, p);
        start(pong, p);
        usleep((useconds_t)(atof(argv[2]) * 1e6));
        uint64_t trips = __atomic_load_n(&slots[0].count, __ATOMIC_RELAXED);
        long long wall = now_ns() - t0;
        getrusage(RUSAGE_SELF, &after);  // every thread's switches (main's few included)
        long switches = (after.ru_nvcsw - before.ru_nvcsw) + (after.ru_nivcsw - before.ru_nivcsw);
        printf("%llu %lld %ld\n", (unsigned long long)trips, wall, switches);
        fflush(stdout);
        _exit(0);
    }
    if (argc != 7) { fprintf(stderr, "usage: busy COUNTERS HOGS PAIRS SLEEPERS SLEEP_US TRIPS | busy pinned SECONDS\n"); return 2; }
    int hogs = atoi(argv[2]), pairs = atoi(argv[3]), sleepers = atoi(argv[4]);
    sleep_ns = atol(argv[5]) * 1000L;
    trips_per_burst = atol(argv[6]);
    int fd = open(argv[1], O_RDWR);
    size_t size = (size_t)(hogs + 2 * pairs + sleepers) * sizeof(struct slot);
    if (fd < 0 || ftruncate(fd, (off_t)size)) { perror(argv[1]); return 2; }
    slots = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (slots == MAP_FAILED) { perror("mmap"); return 2; }
    int slot = 0;
    for (int i = 0; i < hogs; i++, slot++) start(hog, (void *)(intptr_t)slot);
    for (int i = 0; i < pairs; i++, slot += 2) { struct pair *p = new_pair(slot); start(ping, p); start(pong, p); }
    for (int i = 0; i < sleepers; i++, slot++) start(sleeper, (void *)(intptr_t)slot);
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
"""


@dataclass
class Busy:
    """The running busy program and its counters file."""

    proc: subprocess.Popen
    counters: mmap.mmap
    hogs: int
    pairs: int
    sleepers: int

    def slots(self) -> list[tuple[int, int]]:
        return [struct.unpack_from("<QQ", self.counters, i * SLOT) for i in range(self.hogs + 2 * self.pairs + self.sleepers)]

    def snapshot(self) -> dict[str, int]:
        """Work counters, the process's CPU ticks and its threads' context switches, now."""
        s = [count for count, _ in self.slots()]
        h, p = self.hogs, self.pairs
        snap = {"requests": sum(s[:h]), "trips": sum(s[h:h + 2 * p:2]), "wakeups": sum(s[h + 2 * p:]),
                "cpu_ticks": proc_ticks(self.proc.pid), "hog_ticks": sum(proc_ticks(self.proc.pid, tid) for tid in self.hog_tids()),
                "switches": 0}
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                for line in (task / "status").read_text().splitlines():
                    if "ctxt_switches:" in line:  # voluntary and nonvoluntary
                        snap["switches"] += int(line.split()[1])
            except OSError:
                pass
        return snap

    def tids(self, first: int, n: int) -> set[int]:
        return {tid for _, tid in self.slots()[first:first + n]}

    def hog_tids(self) -> set[int]:
        return self.tids(0, self.hogs)


def proc_ticks(pid: int, tid: int | None = None) -> int:
    """utime + stime of a process (all its threads) or of one thread, in clock ticks."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), counted from after the comm


def system_snapshot() -> dict[str, int]:
    """System-wide busy CPU ticks (user + nice + system + irq + softirq) and context switches."""
    snap = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu "):
            user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in line.split()[1:8])
            snap["busy_ticks"] = user + nice + system + irq + softirq
        elif line.startswith("ctxt "):
            snap["ctxt"] = int(line.split()[1])
    return snap


def bpf_prog_stats(profiler: Profiler) -> dict[str, tuple[int, int]]:
    """Program name -> (run_time_ns, run_cnt) of the profiler's loaded programs (kernel.bpf_stats_enabled)."""
    stats = {}
    for name, fn in profiler.bpf.funcs.items():
        info = dict(line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fn.fd}").read_text().splitlines() if ":" in line)
        label = name.decode() if isinstance(name, bytes) else name
        stats[label.replace("tracepoint__sched__", "")] = (int(info.get("run_time_ns", "0")), int(info.get("run_cnt", "0")))
    return stats


@dataclass(frozen=True)
class Mode:
    """What a round loads: nothing (the baseline, hz 0) or a Profiler(sample_hz=hz, off_cpu=off_cpu)."""

    name: str
    hz: int = 0
    off_cpu: bool = False

    @classmethod
    def parse(cls, text: str) -> Mode:
        kind, sep, hz = text.strip().partition("@")
        if not sep or kind not in ("on-cpu", "on+off-cpu") or not hz.isdigit() or int(hz) <= 0:
            raise ValueError(text)
        return cls(f"{kind}@{int(hz)}", int(hz), kind == "on+off-cpu")


BASELINE = Mode("baseline")


@dataclass
class Window:
    """One collect() and what it returned."""

    cpu_s: float
    wall_s: float
    on_samples: int = 0
    on_keys: int = 0
    off_keys: int = 0
    off_s: float = 0.0
    workload_samples: int = 0
    workload_unknown: int = 0
    hog_off_s: float = 0.0
    sleeper_off_s: float = 0.0


@dataclass
class Round:
    """One round of one mode."""

    mode: Mode
    wall_s: float
    work: dict[str, int]  # workload counter deltas
    system: dict[str, int]
    own_cpu_s: float
    pinned: tuple[int, int, int]  # round trips, wall ns, switches
    pinned_bpf: dict[str, tuple[int, int]] = field(default_factory=dict)
    bpf: dict[str, tuple[int, int]] = field(default_factory=dict)  # program -> (run ns, runs) over the round
    windows: list[Window] = field(default_factory=list)
    cold: Window | None = None
    load_s: float = 0.0
    lost: dict[str, int] = field(default_factory=dict)
    stack_entries: int = 0
    others: list[str] = field(default_factory=list)  # other processes holding BPF programs at the round's end
    took_s: float = 0.0  # the whole round: load, settle, the cold collect(), measured seconds, pinned phase, close
    close_s: float = 0.0

    def rate(self, key: str) -> float:
        return self.work[key] / self.wall_s

    @property
    def rest_pct(self) -> float:
        """CPU used by neither the workload nor this process, % of one core."""
        ticks = self.system["busy_ticks"] - self.work["cpu_ticks"]
        return 100 * (ticks / CLK_TCK - self.own_cpu_s) / self.wall_s

    @property
    def switch_ns(self) -> float:
        trips, wall_ns, switches = self.pinned
        return wall_ns / switches if switches else float("nan")

    def bpf_pct(self, prog: str | None = None) -> float:
        return 100 * sum(ns for name, (ns, _) in self.bpf.items() if prog in (None, name)) / (self.wall_s * 1e9)

    @property
    def collect_pct(self) -> float:
        return 100 * sum(w.cpu_s for w in self.windows) / self.wall_s


def analyse(profiles: list, window: Window, busy: Busy) -> Window:
    pid = busy.proc.pid
    hogs, sleepers = busy.hog_tids(), busy.tids(busy.hogs + 2 * busy.pairs, busy.sleepers)
    for p in profiles:
        if p.kind == ON_CPU:
            window.on_samples += p.total()
            window.on_keys += len(p.stacks)
            if p.pid == pid:
                window.workload_samples += p.total()
                window.workload_unknown += sum(n for (_, folded), n in p.stacks.items() if folded.split(";")[1:2] == ["[unknown]"])
        elif p.kind == OFF_CPU:
            window.off_keys += len(p.stacks)
            window.off_s += p.total() / 1e9
            if p.pid == pid:
                window.hog_off_s += sum(n for (tid, _), n in p.stacks.items() if tid in hogs) / 1e9
                window.sleeper_off_s += sum(n for (tid, _), n in p.stacks.items() if tid in sleepers) / 1e9
    return window


def timed_collect(profiler: Profiler, busy: Busy) -> Window:
    cpu, wall = time.thread_time(), time.perf_counter()
    profiles = profiler.collect()
    window = Window(time.thread_time() - cpu, time.perf_counter() - wall)
    return analyse(profiles, window, busy)


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pinned_phase(exe: Path, busy: Busy, seconds: float) -> tuple[int, int, int]:
    """Stop the busy program, ping-pong on one CPU alone, continue it."""
    os.kill(busy.proc.pid, signal.SIGSTOP)
    try:
        out = subprocess.run([str(exe), "pinned", str(seconds)], capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    finally:
        os.kill(busy.proc.pid, signal.SIGCONT)
    trips, wall_ns, switches = (int(x) for x in out.split())
    return trips, wall_ns, switches


def delta(after: dict[str, tuple[int, int]], before: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after}


def run_round(mode: Mode, exe: Path, busy: Busy, args: argparse.Namespace) -> Round:
    began = time.monotonic()
    closed: list[float] = []
    result = run_round_inner(mode, exe, busy, args, closed)
    result.took_s = time.monotonic() - began
    result.close_s = sum(closed)
    return result


def run_round_inner(mode: Mode, exe: Path, busy: Busy, args: argparse.Namespace, closed: list[float]) -> Round:
    profiler = None
    load_s = 0.0
    cold = None
    if mode.hz:
        started = time.monotonic()
        profiler = Profiler(sample_hz=mode.hz, min_block_ms=1.0, off_cpu=mode.off_cpu)
        load_s = time.monotonic() - started
    try:
        time.sleep(SETTLE_S)
        if profiler:
            cold = timed_collect(profiler, busy)  # the workload's symbols are read here, once
        bpf0 = bpf_prog_stats(profiler) if profiler else {}
        work0, sys0, own0, t0 = busy.snapshot(), system_snapshot(), own_cpu_s(), time.monotonic()
        windows = []
        end = t0 + args.seconds
        next_window = t0 + args.window
        while True:
            now = time.monotonic()
            if now >= end - 0.01:
                break
            time.sleep(max(0.0, min(next_window, end) - now))
            if profiler and time.monotonic() >= next_window - 0.01:
                windows.append(timed_collect(profiler, busy))
                next_window += args.window
        wall_s = time.monotonic() - t0
        work1, sys1, own1 = busy.snapshot(), system_snapshot(), own_cpu_s()
        bpf1 = bpf_prog_stats(profiler) if profiler else {}
        stack_entries = sum(1 for _ in profiler.bpf["stacks"].keys()) if profiler else 0  # just after the last collect()
        pinned = pinned_phase(exe, busy, args.pinned_seconds)
        bpf2 = bpf_prog_stats(profiler) if profiler else {}
        result = Round(mode, wall_s, {k: work1[k] - work0[k] for k in work0}, {k: sys1[k] - sys0[k] for k in sys0}, own1 - own0,
                       pinned, pinned_bpf=delta(bpf2, bpf1), bpf=delta(bpf1, bpf0), windows=windows, cold=cold, load_s=load_s,
                       stack_entries=stack_entries)
        if profiler:
            result.lost = profiler.lost()
        result.others = other_bpf_holders()
        return result
    finally:
        if profiler:
            started = time.monotonic()
            profiler.close()  # detach: the kernel waits for an RCU grace period, which a busy node can make long
            closed.append(time.monotonic() - started)


def progress(i: int, r: Round, elapsed_s: float) -> None:
    line = (f"{elapsed_s:5.0f}s round {i}: {r.mode.name:>13}  {r.rate('requests'):>9,.0f} req/s {r.rate('trips'):>8,.0f} trips/s {r.rate('wakeups'):>6,.0f} wakeups/s "
            f"{r.rate('switches'):>8,.0f} sw/s  rest {r.rest_pct:4.1f}%  pinned {r.switch_ns:5.0f} ns/sw")
    if r.mode.hz:
        w = r.windows
        line += (f"  bpf {r.bpf_pct():.2f}% [" + " ".join(f"{k} {ns / max(n, 1):.0f}ns x{n / r.wall_s:,.0f}/s" for k, (ns, n) in r.bpf.items())
                 + f"]  collect {1000 * sum(x.cpu_s for x in w) / max(len(w), 1):.1f} ms/window (cold {1000 * r.cold.cpu_s:.0f} ms CPU, {1000 * r.cold.wall_s:.0f} ms wall)"
                 + f"  samples {sum(x.on_samples for x in w)} keys {sum(x.on_keys for x in w)}+{sum(x.off_keys for x in w)}"
                 + f"  stacks map {r.stack_entries}  lost {sum(r.lost.values())}  load {r.load_s:.1f}s")
    line += f"  (round took {r.took_s:.0f}s" + (f", close {r.close_s:.1f}s)" if r.mode.hz else ")")
    if r.others:
        line += f"  WARNING: other BPF holders {', '.join(r.others)}"
    print(line, file=sys.stderr, flush=True)


def med(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def report(rounds: list[Round], subjects: list[Mode], args: argparse.Namespace, busy: Busy) -> None:
    modes = [BASELINE, *subjects]
    by = {m: [r for r in rounds if r.mode == m] for m in modes}
    base = by[BASELINE]
    offs = [m for m in subjects if m.off_cpu]
    width = max(15, 2 + max(len(m.name) for m in modes))

    def row(name: str, fn, fmt: str = "{:,.0f}", modes_: list[Mode] = modes) -> None:
        cells = []
        for m in modes:
            if m not in modes_:
                cells.append("")
                continue
            try:
                value = fn(m, by[m])
            except (ZeroDivisionError, statistics.StatisticsError, TypeError, AttributeError, KeyError):
                value = None
            cells.append(fmt.format(value) if value is not None else "-")
        print(f"{name:<52}" + "".join(f"{c:>{width}}" for c in cells))

    def ratio(key: str):
        return lambda m, rs: med(r.rate(key) for r in rs) / med(r.rate(key) for r in base)

    def per_window(attr: str):
        return lambda m, rs: med(statistics.mean(getattr(w, attr) for w in r.windows) for r in rs)

    def added_ns(m: Mode, rs: list[Round]) -> float:
        return med(r.switch_ns for r in rs) - med(r.switch_ns for r in base)

    hog_cores = med(r.work["hog_ticks"] / CLK_TCK / r.wall_s for r in base)
    sw_rate = med(r.rate("switches") for r in base)
    progs = sorted({p for r in rounds for p in r.bpf})
    print(f"\nmedians of {args.rounds} rounds each, {args.seconds:g} s measured per round, collect() every {args.window:g} s; "
          f"workload: {busy.hogs} hogs, {busy.pairs} ping-pong pairs, {busy.sleepers} sleepers ({args.sleep_us} us)")
    print(f"{'':<52}" + "".join(f"{m.name:>{width}}" for m in modes))
    print("workload")
    row("  requests/s (hogs)", lambda m, rs: med(r.rate("requests") for r in rs))
    row("    / baseline", ratio("requests"), "{:.3f}")
    row("  ping-pong round trips/s", lambda m, rs: med(r.rate("trips") for r in rs))
    row("    / baseline", ratio("trips"), "{:.3f}")
    row("  sleeper wake-ups/s", lambda m, rs: med(r.rate("wakeups") for r in rs))
    row("    / baseline", ratio("wakeups"), "{:.3f}")
    row("  its context switches/s", lambda m, rs: med(r.rate("switches") for r in rs))
    row("  system context switches/s", lambda m, rs: med(r.system["ctxt"] / r.wall_s for r in rs))
    row("  its CPU, % of one core", lambda m, rs: med(100 * r.work["cpu_ticks"] / CLK_TCK / r.wall_s for r in rs), "{:.1f}")
    row("  rest (neither it nor us), % of one core", lambda m, rs: med(r.rest_pct for r in rs), "{:.1f}")
    print("a  BPF programs (bpf_stats)")
    for prog in progs:
        have = [m for m in subjects if all(prog in r.bpf for r in by[m])]
        row(f"  {prog}: runs/s", lambda m, rs, p=prog: med(r.bpf[p][1] / r.wall_s for r in rs), modes_=have)
        row(f"  {prog}: ns per run", lambda m, rs, p=prog: med(r.bpf[p][0] / r.bpf[p][1] for r in rs), modes_=have)
        row(f"  {prog}: % of one core", lambda m, rs, p=prog: med(r.bpf_pct(p) for r in rs), "{:.3f}", have)
    row("  sched_switch: % of one core per 10,000 switches/s",
        lambda m, rs: med(r.bpf["sched_switch"][0] / r.bpf["sched_switch"][1] for r in rs) * 1e4 / 1e7, "{:.3f}", offs)
    row("  all programs: % of one core", lambda m, rs: med(r.bpf_pct() for r in rs), "{:.3f}", subjects)
    print(f"b  collect() every {args.window:g} s")
    row("  CPU ms per call (steady)", lambda m, rs: med(1000 * w.cpu_s for r in rs for w in r.windows), "{:.1f}", subjects)
    row("  wall ms per call (steady)", lambda m, rs: med(1000 * w.wall_s for r in rs for w in r.windows), "{:.1f}", subjects)
    row("  CPU ms, a round's first call (frames resolved)", lambda m, rs: med(1000 * r.cold.cpu_s for r in rs), "{:.0f}", subjects)
    row("  % of one core", lambda m, rs: med(r.collect_pct for r in rs), "{:.3f}", subjects)
    row("  this process's whole CPU over the round, %", lambda m, rs: med(100 * r.own_cpu_s / r.wall_s for r in rs), "{:.3f}")
    row("a + b: the profiler, % of one core", lambda m, rs: med(total_pct(r) for r in rs), "{:.3f}", subjects)
    print("c  end to end (noisy)")
    row(f"  (1 - requests ratio) x {hog_cores:.2f} hog cores, %",
        lambda m, rs: 100 * (1 - ratio("requests")(m, rs)) * hog_cores, "{:+.2f}", subjects)
    print("d  per context switch (pinned ping-pong, CPU 0 alone)")
    row("  ns per switch", lambda m, rs: med(r.switch_ns for r in rs))
    row("  added ns per switch", added_ns, "{:+,.0f}", subjects)
    row("  sched_switch program's ns per run here (bpf_stats)",
        lambda m, rs: med(r.pinned_bpf["sched_switch"][0] / r.pinned_bpf["sched_switch"][1] for r in rs), modes_=offs)
    row(f"  x {sw_rate:,.0f} switches/s of the workload, %", lambda m, rs: 100 * added_ns(m, rs) * 1e-9 * sw_rate, "{:+.2f}", subjects)
    print(f"per {args.window:g} s window")
    row("  on-CPU samples (all processes)", per_window("on_samples"), modes_=subjects)
    row("  on-CPU keys", per_window("on_keys"), modes_=subjects)
    row("  off-CPU keys", per_window("off_keys"), modes_=offs)
    row("  off-CPU seconds (all processes)", per_window("off_s"), "{:,.1f}", offs)
    row("  sleepers' off-CPU seconds", per_window("sleeper_off_s"), "{:,.2f}", offs)
    row("  hogs' off-CPU seconds (they never sleep: 0)", per_window("hog_off_s"), "{:,.2f}", offs)
    row("  workload samples with [unknown] user stack, %",
        lambda m, rs: 100 * sum(w.workload_unknown for r in rs for w in r.windows) / sum(w.workload_samples for r in rs for w in r.windows),
        "{:.1f}", subjects)
    row("  stack map entries just after the last collect()", lambda m, rs: med(r.stack_entries for r in rs), modes_=subjects)
    row("  lost (samples + blocks) per round", lambda m, rs: med(sum(r.lost.values()) for r in rs), modes_=subjects)
    row("  profiler load (bcc compile + attach), s", lambda m, rs: med(r.load_s for r in rs), "{:.1f}", subjects)
    row("  profiler close (detach), s: median", lambda m, rs: med(r.close_s for r in rs), "{:.1f}", subjects)
    row("  profiler close (detach), s: longest", lambda m, rs: max(r.close_s for r in rs), "{:.1f}", subjects)


def total_pct(r: Round) -> float:
    """a + b: the BPF programs' time and collect()'s CPU time, % of one core."""
    return r.bpf_pct() + r.collect_pct


def verdict(rounds: list[Round], subjects: list[Mode]) -> str:
    """The agent's default mode (on-CPU at its profile_hz; else the first on-cpu mode, else the first mode), and the
    on+off-cpu mode at the same rate beside it."""
    agent = AgentSettings()
    ons = [m for m in subjects if not m.off_cpu]
    default = next((m for m in ons if m.hz == agent.profile_hz), ons[0] if ons else subjects[0])
    is_default = default.hz == agent.profile_hz and default.off_cpu == agent.profile_off_cpu
    rs = [r for r in rounds if r.mode == default]
    total = med(total_pct(r) for r in rs)
    parts = ", ".join(f"{p} {med(r.bpf_pct(p) for r in rs):.3f} %" for p in sorted(rs[0].bpf)) + f", collect() {med(r.collect_pct for r in rs):.3f} %"
    kind = "on-CPU and off-CPU" if default.off_cpu else "on-CPU"
    line = (f"profiler at {default.hz} Hz, {kind}{' (the agent' + chr(39) + 's default)' if is_default else ''}: {total:.2f} % of one core "
            f"(limit {LIMIT_PCT:g} %: {'OK' if total <= LIMIT_PCT else 'OVER'}) [{parts}]")
    off = next((m for m in subjects if m.off_cpu and m.hz == default.hz and m != default), None)
    if off:
        ro = [r for r in rounds if r.mode == off]
        off_total = med(total_pct(r) for r in ro)
        switches = med(r.bpf["sched_switch"][1] / r.wall_s for r in ro)  # every context switch of the node
        line += (f"; with off-CPU: {off_total:.2f} % at {switches:,.0f} switches/s "
                 f"(≈ {(off_total - total) * 1e4 / switches:.2f} % per 10,000 switches/s)")
    return line


def start_busy(exe: Path, workdir: Path, hogs: int, pairs: int, sleepers: int, sleep_us: int, trips: int) -> Busy:
    path = workdir / "counters"
    size = (hogs + 2 * pairs + sleepers) * SLOT
    path.write_bytes(b"\0" * size)
    proc = subprocess.Popen([str(exe), str(path), str(hogs), str(pairs), str(sleepers), str(sleep_us), str(trips)], stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline() != "ready\n":
        raise RuntimeError("the busy program did not start")
    with open(path, "r+b") as f:
        counters = mmap.mmap(f.fileno(), size)
    busy = Busy(proc, counters, hogs, pairs, sleepers)
    deadline = time.monotonic() + 5
    while not all(tid for _, tid in busy.slots()):
        if time.monotonic() > deadline:
            raise RuntimeError("the busy program's threads did not start")
        time.sleep(0.01)
    return busy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[2:]))
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every mode, alternating order (default 3)")
    ap.add_argument("--modes", default="on-cpu@99,on+off-cpu@99,on-cpu@999",
                    help="profiler modes to measure against the baseline, comma-separated: on-cpu@HZ (Profiler(sample_hz=HZ, "
                         "off_cpu=False)) or on+off-cpu@HZ (off_cpu=True) (default on-cpu@99,on+off-cpu@99,on-cpu@999)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per round (default 10)")
    ap.add_argument("--window", type=float, default=10.0, help="seconds between collect() calls (default 10, the agent's)")
    ap.add_argument("--pinned-seconds", type=float, default=2.0, help="the pinned ping-pong phase per round (default 2)")
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="CPU-bound threads (default: one per CPU)")
    ap.add_argument("--pairs", type=int, default=2, help="ping-pong thread pairs (default 2)")
    ap.add_argument("--switch-rate", type=int, default=20_000,
                    help="the pairs' voluntary context switches per second, paced (default 20000; 0: unpaced, as fast as they go)")
    ap.add_argument("--sleepers", type=int, default=4, help="nanosleep threads (default 4)")
    ap.add_argument("--sleep-us", type=int, default=1500, help="the sleepers' nanosleep, us (default 1500: over the 1 ms threshold)")
    args = ap.parse_args()
    try:
        subjects = list(dict.fromkeys(Mode.parse(x) for x in args.modes.split(",") if x.strip()))
    except ValueError as exc:
        sys.exit(f"--modes: {exc} is not on-cpu@HZ or on+off-cpu@HZ (HZ a positive integer)")
    if not subjects or args.window <= 0 or args.seconds < args.window:
        sys.exit("--modes must name at least one mode and --seconds be at least --window")
    if os.geteuid() != 0:
        sys.exit("needs root (the profiler loads BPF programs)")
    if not shutil.which("gcc"):
        sys.exit("gcc not found (apt-get install -y gcc)")

    workdir = Path(tempfile.mkdtemp(prefix="tracetap-bench-profiler-"))
    stats_before = BPF_STATS.read_text().strip()
    busy = None
    try:
        src, exe = workdir / "busy.c", workdir / "busy"
        src.write_text(BUSY_C.replace("PINNED_CPU", str(PINNED_CPU)).replace("BURST_NS", f"{BURST_NS}LL"))
        subprocess.run(["gcc", "-O2", "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls", "-pthread", "-o", str(exe), str(src)], check=True)
        BPF_STATS.write_text("1")
        trips = round(args.switch_rate / 2 / args.pairs * BURST_NS / 1e9) if args.pairs else 0
        if args.switch_rate and not trips:
            sys.exit(f"--switch-rate {args.switch_rate} is under one round trip per pair and burst")
        busy = start_busy(exe, workdir, args.hogs, args.pairs, args.sleepers, args.sleep_us, trips)
        print(f"profiler overhead: {os.uname().release}, {os.cpu_count()} cpus; modes baseline + {', '.join(m.name for m in subjects)}, "
              f"{args.rounds} rounds; {conditions()}", file=sys.stderr, flush=True)
        time.sleep(SETTLE_S)
        modes = [BASELINE, *subjects]
        rounds: list[Round] = []
        started = time.monotonic()
        for i in range(args.rounds):
            for mode in (modes if i % 2 == 0 else modes[::-1]):
                r = run_round(mode, exe, busy, args)
                progress(i + 1, r, time.monotonic() - started)
                rounds.append(r)
        report(rounds, subjects, args, busy)
        rest = med(r.rest_pct for r in rounds)
        print("\n" + verdict(rounds, subjects))
        print(("WARNING: other work used " if rest > 5 else "") + f"{rest:.1f} % of a core besides the workload and this process (median); {conditions()}")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if busy:
            busy.proc.kill()
            busy.proc.wait()
        BPF_STATS.write_text(stats_before)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
