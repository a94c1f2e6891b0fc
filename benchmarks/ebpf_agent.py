"""Benchmark: the eBPF node agent (`tracetap agent ebpf`): sustained capture rate and overhead on an app.

Not a test (never run in CI, not collected by pytest). Needs root, the local stack (`tracetap stack up`),
gcc, and for the overhead figure `wrk` and `nginx` (`apt-get install -y wrk nginx-light`). Every agent
run uses TRACETAP_TOPICS__PREFIX=tracetap-bench. (the script applies that catalog first), so no benchmark
record lands on a real topic.

    .venv/bin/python benchmarks/ebpf_agent.py [--quick] [--steps 10000,25000,...] [--step-s 5] [--rounds 3]
                                              [--no-http] [--no-profile] [--profile-rate N]

  1 capture   (agent --raw: every event to Kafka) a C load generator (compiled at run time into /tmp) does write()+read() of 256-byte
              datagrams on a connected UDP pair over loopback, paced to each step's offered rate; each
              syscall is one event. One agent run per step (payload_bytes=256), stopped with SIGINT;
              the table shows the generator's own syscall count, what the agent captured, its loss
              counters, CPU% and peak RSS, and how long it took to exit (draining its queue to Kafka).
              Baseline, same run: the generator unpaced with no agent attached (and again with one).
  2 overhead  nginx (1 worker, tiny static file, config in /tmp) under `wrk -t1 -c32 --latency`,
              alternating rounds without / with the agent attached (its default mode, in-collector); medians
              of req/s and p99 and the with/without ratio, plus the agent's CPU, RSS and counters in the
              "with" rounds.
  0 syscall   in-kernel cost: a C program does 10^6 write()+read() of 64-byte datagrams on a connected
              UDP pair, paced (so the agent's reader keeps up: no event lost), on CPU 0 with the agent
              pinned to CPU 1; it measures its own CPU time inside the syscall batches. Alternating
              rounds without / with the agent: added ns per captured syscall (enter + exit hooks,
              ring buffer). DeepFlow's paper: 277-889 ns per syscall.
  2b budget   figure 2 again with the agent bounded by `--cpu-budget` (a CFS quota; flows shed whole)
              (in-collector, the default): req/s and p99 ratios, the lowest sample ratio, and every span of
              nginx's port read back from Kafka checked for completeness (request, response, no error).
  3 profile   if figure 1 shows the agent losing events while its process uses ~a full core (the
              Python side is the bottleneck), cProfile of `cli.main agent ebpf --duration` under load
              (main thread only: the capture callbacks; the sender thread is not in it).

Absolute numbers are noisy on a small shared machine (the agent, the generator, Kafka and anything
else running share 2 cores); compare the ratios between commits. Everything the script starts
(agents, generators, nginx, wrk) is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACETAP = ROOT / ".venv" / "bin" / "tracetap"
PYTHON = ROOT / ".venv" / "bin" / "python"
BENCH_PREFIX = "tracetap-bench."
PAYLOAD = 256
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOSS_KEYS = ("data_lost", "queue_overflow", "shed_events")  # shed: left out whole by the kernel after a loss
OTHER_LOSS_KEYS = ("lifecycle_lost", "kafka_undelivered", "undelivered_at_exit", "invalid_records", "decode_errors")

GENERATOR_C = r"""
// write()+read() of SIZE-byte datagrams on a connected UDP pair over loopback, paced to RATE
// syscalls/s (0: as fast as possible), for SECONDS; prints the successful syscalls and the time.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: gen RATE SECONDS SIZE\n"); return 2; }
    double rate = atof(argv[1]), seconds = atof(argv[2]);
    int size = atoi(argv[3]);
    int a = socket(AF_INET, SOCK_DGRAM, 0), b = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)}, sb = sa;
    socklen_t len = sizeof(sa);
    if (bind(a, (void *)&sa, len) || bind(b, (void *)&sb, len)) { perror("bind"); return 1; }
    getsockname(a, (void *)&sa, &len); getsockname(b, (void *)&sb, &len);
    if (connect(a, (void *)&sb, len) || connect(b, (void *)&sa, len)) { perror("connect"); return 1; }
    char out[8192], in[8192];
    for (int i = 0; i < size; i++) out[i] = 'a' + i % 26;
    memcpy(out, "GET /bench HTTP/1.1\r\nHost: bench\r\n", 34);
    long long ops = 0;
    double start = now(), end = start + seconds, t = start;
    struct timespec nap = {0, 200000};
    while (t < end) {
        for (int i = 0; i < 64; i++) {  // check the clock every 64 pairs
            if (rate > 0 && ops >= (t - start) * rate) break;
            if (write(a, out, size) > 0) ops++;
            if (read(b, in, sizeof(in)) > 0) ops++;
        }
        t = now();
        if (rate > 0 && ops >= (t - start) * rate) { nanosleep(&nap, NULL); t = now(); }
    }
    printf("%lld %.6f\n", ops, now() - start);
    return 0;
}
"""


# processes ----------------------------------------------------------------------------------------
class Procs:
    """Every child, in its own process group; stop_all() ends them (agents get SIGINT first)."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen] = []

    def start(self, argv: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(argv, start_new_session=True, **kw)
        self.children.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, wait_s: float = 10.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        if proc in self.children:
            self.children.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.children):
            self.stop(proc, signal.SIGINT, 5.0)


PROCS = Procs()


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def loadavg() -> str:
    """The load average, and a warning if another eBPF agent (not ours) is attached: it skews every figure."""
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    ours = {os.getpid(), *(p.pid for p in PROCS.children)}
    others = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int(d.name) not in ours:
                argv = (d / "cmdline").read_bytes().split(b"\0")
                if b"agent" in argv and b"ebpf" in argv:
                    others.append(d.name)
        except OSError:
            pass
    return load + (f"; WARNING: other eBPF agents running, pids {','.join(others)}" if others else "")


def agent_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # The generators send HTTP text over UDP, which no parser claims (HTTP is TCP here): by default the kernel
    # would then send their events as byte counts only. The capture figures measure payload capture.
    env = dict(os.environ, TRACETAP_TOPICS__PREFIX=BENCH_PREFIX, TRACETAP_AGENT__PAYLOAD_BYTES=str(PAYLOAD),
               TRACETAP_AGENT__UNKNOWN_PROTOCOL_PAYLOADS="true", TRACETAP_LOG__LEVEL="WARNING")
    env.update(extra or {})
    return env


@dataclass
class AgentRun:
    data: int = 0
    lifecycle: int = 0
    totals: dict[str, int] = field(default_factory=dict)
    cpu_pct: float = 0.0
    rss_peak: float = 0.0
    exit_s: float = 0.0
    min_ratio: float = 1.0

    @property
    def lost(self) -> int:
        return sum(self.totals.get(k, 0) for k in LOSS_KEYS)

    @property
    def other_lost(self) -> int:
        return sum(self.totals.get(k, 0) for k in OTHER_LOSS_KEYS)


FINAL = re.compile(r"captured (\d+) data and (\d+) lifecycle events(?:, \d+ spans)?(?:, lowest sample ratio ([\d.]+))?; (.*)")


class Agent:
    """One `tracetap agent ebpf` run: start() waits for 'capturing on', measure while the load runs, stop()."""

    def __init__(self, procs: Procs, workdir: Path, argv: list[str] | None = None) -> None:
        self.procs, self.workdir = procs, workdir
        self.argv = argv or [str(TRACETAP), "agent", "ebpf"]
        self.proc: subprocess.Popen | None = None
        self.sent_in_step = 0

    def start(self, timeout_s: float = 60.0) -> None:
        self.log = open(self.workdir / "agent.log", "w+")
        self.proc = self.procs.start(self.argv, cwd=ROOT, env=agent_env(), stdout=subprocess.PIPE, stderr=self.log, text=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("capturing on"):
                return
            if not line and self.proc.poll() is not None:
                break
        self.log.seek(0)
        raise RuntimeError(f"agent did not start: {self.log.read()[-2000:]}")

    def begin(self) -> None:
        self.t0, self.c0, self.rss_peak = time.monotonic(), cpu_ticks(self.proc.pid), rss_mib(self.proc.pid)

    def sample(self) -> None:
        self.rss_peak = max(self.rss_peak, rss_mib(self.proc.pid))

    def stop(self) -> AgentRun:
        run = AgentRun(rss_peak=max(self.rss_peak, rss_mib(self.proc.pid)))
        run.cpu_pct = 100.0 * (cpu_ticks(self.proc.pid) - self.c0) / CLK_TCK / (time.monotonic() - self.t0)
        started = time.monotonic()
        os.kill(self.proc.pid, signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.procs.stop(self.proc, signal.SIGKILL)
            raise RuntimeError("agent did not exit within 120 s of SIGINT")
        run.exit_s = time.monotonic() - started
        self.procs.children.remove(self.proc)
        match = FINAL.search(out or "")
        if not match:
            self.log.seek(0)
            raise RuntimeError(f"no final line from the agent: {out!r} {self.log.read()[-2000:]}")
        run.data, run.lifecycle = int(match[1]), int(match[2])
        run.min_ratio = float(match[3] or 1.0)
        run.totals = {k: int(v) for k, v in (kv.split("=") for kv in match[4].split(", "))}
        return run


# figure 0: in-kernel cost per syscall ------------------------------------------------------------
SYSCALL_COST_C = r"""
// PAIRS write()+read() of 64-byte datagrams on a connected UDP pair in batches of 64 pairs, paced to
// RATE syscalls/s; prints the successful syscalls and the CPU time spent inside the batches (ns).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long ns(clockid_t c) { struct timespec t; clock_gettime(c, &t); return t.tv_sec * 1000000000LL + t.tv_nsec; }

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: cost PAIRS RATE\n"); return 2; }
    long long pairs = atoll(argv[1]);
    double rate = atof(argv[2]);
    int a = socket(AF_INET, SOCK_DGRAM, 0), b = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)}, sb = sa;
    socklen_t len = sizeof(sa);
    if (bind(a, (void *)&sa, len) || bind(b, (void *)&sb, len)) { perror("bind"); return 1; }
    getsockname(a, (void *)&sa, &len); getsockname(b, (void *)&sb, &len);
    if (connect(a, (void *)&sb, len) || connect(b, (void *)&sa, len)) { perror("connect"); return 1; }
    char out[64] = "GET /cost HTTP/1.1\r\nHost: cost\r\n\r\n", in[128];
    long long ops = 0, cpu = 0, start = ns(CLOCK_MONOTONIC);
    for (long long done = 0; done < pairs; done += 64) {
        long long c0 = ns(CLOCK_THREAD_CPUTIME_ID);
        for (int i = 0; i < 64; i++) {
            if (write(a, out, sizeof(out)) > 0) ops++;
            if (read(b, in, sizeof(in)) > 0) ops++;
        }
        cpu += ns(CLOCK_THREAD_CPUTIME_ID) - c0;
        long long due = start + (long long)(ops / rate * 1e9);
        while (ns(CLOCK_MONOTONIC) < due) { struct timespec nap = {0, 100000}; nanosleep(&nap, NULL); }
    }
    printf("%lld %lld\n", ops, cpu);
    return 0;
}
"""


def syscall_cost_figure(procs: Procs, workdir: Path, pairs: int, rate: int, rounds: int) -> None:
    print(f"\n== 0. in-kernel cost: {pairs:,} write()+read() pairs of 64-byte datagrams, paced to {rate:,} syscalls/s, "
          f"generator on CPU 0, agent on CPU 1, {rounds} alternating rounds  (load {loadavg()})")
    src, exe = workdir / "cost.c", workdir / "cost"
    src.write_text(SYSCALL_COST_C)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    per_call: dict[str, list[float]] = {"without": [], "with": []}
    print(f"{'round':>5} {'mode':>8} {'syscalls':>10} {'ns/syscall':>10} {'captured':>9} {'lost':>6}")
    for i in range(rounds):
        for mode in ("without", "with"):
            agent = None
            if mode == "with":
                agent = Agent(procs, workdir, ["taskset", "-c", "1", str(TRACETAP), "agent", "ebpf", "--raw"])
                agent.start()
                time.sleep(0.5)
            proc = procs.start(["taskset", "-c", "0", str(exe), str(pairs), str(rate)], stdout=subprocess.PIPE, text=True)
            out, _ = proc.communicate()
            procs.children.remove(proc)
            ops, cpu_ns = (int(x) for x in out.split())
            extra = ""
            if agent:
                agent.begin()
                time.sleep(0.5)
                run = agent.stop()
                extra = f"{run.data:>9,} {run.lost:>6,}"
            per_call[mode].append(cpu_ns / ops)
            print(f"{i + 1:>5} {mode:>8} {ops:>10,} {cpu_ns / ops:>10.0f} {extra}", flush=True)
    without, with_agent = statistics.median(per_call["without"]), statistics.median(per_call["with"])
    print(f"median CPU per syscall: without {without:.0f} ns, with {with_agent:.0f} ns: {with_agent - without:+.0f} ns added per "
          f"captured syscall (goal <= 600 ns: {'met' if with_agent - without <= 600 else 'NOT met'}; DeepFlow: 277-889 ns)")


# figure 1: capture rate -------------------------------------------------------------------------
class Watermarks:
    """Records on tracetap-bench.raw.socket-data (sum of the partitions' high watermarks): what the agent's
    sender delivered to Kafka while a step ran, which its 100k-record queue can otherwise hide for a while."""

    def __init__(self) -> None:
        sys.path.insert(0, str(ROOT))
        from confluent_kafka import Consumer, TopicPartition

        from cli.main import read_settings
        from schemas.catalog import SOCKET_DATA
        from schemas.kafka import client_config

        settings = read_settings(None, agent_env())
        self.topic = SOCKET_DATA.full_name(settings.topics.prefix)
        self.consumer = Consumer(client_config(settings.kafka, **{"group.id": "tracetap-bench-ebpf", "enable.auto.commit": False}))
        parts = self.consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
        self.partitions = [TopicPartition(self.topic, p) for p in parts]

    def total(self) -> int:
        return sum(self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in self.partitions)

    def close(self) -> None:
        self.consumer.close()


def build_generator(workdir: Path) -> Path:
    src, exe = workdir / "gen.c", workdir / "gen"
    src.write_text(GENERATOR_C)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def run_generator(procs: Procs, gen: Path, rate: int, seconds: float, agent: Agent | None = None,
                  marks: Watermarks | None = None) -> tuple[int, float]:
    start_mark = marks.total() if marks else 0
    proc = procs.start([str(gen), str(rate), str(seconds), str(PAYLOAD)], stdout=subprocess.PIPE, text=True)
    if agent:
        agent.begin()
        while proc.poll() is None:
            agent.sample()
            time.sleep(0.25)
    if marks:
        agent.sent_in_step = marks.total() - start_mark
    out, _ = proc.communicate()
    procs.children.remove(proc)
    ops, elapsed = out.split()
    return int(ops), float(elapsed)


def capture_figure(procs: Procs, workdir: Path, gen: Path, steps: list[int], step_s: float, marks: Watermarks) -> list[dict]:
    print(f"\n== 1. capture rate: UDP write+read of {PAYLOAD}-byte datagrams over loopback, {step_s:g} s per step, "
          f"payload_bytes={PAYLOAD}  (load {loadavg()})")
    base_ops, base_t = run_generator(procs, gen, 0, step_s)
    base_rate = base_ops / base_t
    print(f"baseline: generator unpaced, no agent: {base_rate:,.0f} syscalls/s")
    rows = []
    header = (f"{'step':>8} {'offered/s':>10} {'offered':>9} {'captured':>9} {'capt-off':>8} {'lost':>8} {'other':>6} "
              f"{'delivered':>9} {'sent/s':>8} {'cpu%':>6} {'rssMiB':>7} {'exit_s':>6}  note")
    print(header)
    for rate in [None, *steps, 0]:  # None: idle (agent, no generator); 0: generator unpaced with the agent
        agent = Agent(procs, workdir, [str(TRACETAP), "agent", "ebpf", "--raw"])  # every event to Kafka: the rate of capture
        agent.start()
        time.sleep(0.5)
        if rate is None:
            agent.begin()
            for _ in range(int(step_s * 4)):
                agent.sample()
                time.sleep(0.25)
            ops, elapsed = 0, step_s
            agent.sent_in_step = 0
        else:
            ops, elapsed = run_generator(procs, gen, rate, step_s, agent, marks)
        time.sleep(0.5)  # let the ring buffer drain before SIGINT
        run = agent.stop()
        offered_rate = ops / elapsed
        label = "idle" if rate is None else ("max" if rate == 0 else f"{rate // 1000}k")
        sent_rate = agent.sent_in_step / elapsed
        keeps_up = rate is None or sent_rate >= 0.9 * offered_rate
        row = dict(step=label, rate=rate, offered_rate=offered_rate, offered=ops, run=run, sent_rate=sent_rate, keeps_up=keeps_up)
        rows.append(row)
        note = []
        if rate is not None and (run.lost or run.data < ops):
            note.append("LOSS" if run.lost else "captured<offered")
        if not keeps_up:
            note.append("SENDER-BEHIND")
        if rate == 0:
            note.append(f"generator {offered_rate / base_rate:.2f}x of no-agent baseline")
        print(f"{label:>8} {offered_rate:>10,.0f} {ops:>9,} {run.data:>9,} {run.data - ops:>8,} {run.lost:>8,} {run.other_lost:>6,} "
              f"{run.totals.get('delivered', 0):>9,} {sent_rate:>8,.0f} {run.cpu_pct:>6.1f} {run.rss_peak:>7.1f} {run.exit_s:>6.1f}  {' '.join(note)}",
              flush=True)
    paced = [r for r in rows if r["rate"]]
    sat = next((r for r in paced if r["run"].lost or r["run"].data < r["offered"]), None)
    ok = [r for r in paced if r is not sat and (sat is None or r["rate"] < sat["rate"])]
    best = max((r["offered_rate"] for r in ok), default=0.0)
    print(f"sustained without loss: {best:,.0f} events/s ({best / base_rate:.3f}x of the generator's no-agent max); "
          + (f"saturation at step {sat['step']} (offered {sat['offered_rate']:,.0f}/s, lost {sat['run'].lost:,}, "
             f"captured {sat['run'].data:,} of {sat['offered']:,})" if sat else "no saturation within the steps"))
    behind = next((r for r in paced if not r["keeps_up"]), None)
    kept = [r for r in paced if r["keeps_up"] and not r["run"].lost and (behind is None or r["rate"] < behind["rate"])]
    print(f"steady state (Kafka delivery during the step >= 90% of offered, no loss): "
          f"{max((r['offered_rate'] for r in kept), default=0.0):,.0f} events/s; "
          + (f"sender first behind at step {behind['step']} (sent {behind['sent_rate']:,.0f}/s of {behind['offered_rate']:,.0f}/s offered)"
             if behind else "sender kept up at every step"))
    print("lost = data_lost (BPF ring buffer full) + queue_overflow (in-process buffer full) + shed_events (flows the "
          "kernel left out whole after a loss); other = lifecycle_lost + "
          "kafka_undelivered + undelivered_at_exit + invalid_records + decode_errors; capt-off = captured - offered "
          "(other processes' traffic); sent/s = records reaching Kafka's socket-data topic while the generator ran; exit_s = SIGINT to exit (draining the queue to Kafka)")
    return rows


# figure 2: overhead on nginx --------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(procs: Procs, workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    root = workdir / "nginx"
    (root / "www").mkdir(parents=True, exist_ok=True)
    (root / "www" / "index.html").write_text("<html><body>tracetap bench</body></html>\n")
    for d in (workdir, root, root / "www"):
        d.chmod(0o755)
    temp = "".join(f"    {k}_temp_path {root}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (root / "nginx.conf").write_text(f"""worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp}    server {{ listen 127.0.0.1:{port}; root {root}/www; location / {{ }} }}
}}
""")
    proc = procs.start(["nginx", "-c", str(root / "nginx.conf"), "-p", str(root)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("nginx did not start")


def parse_wrk(out: str) -> tuple[float, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    value, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
    return rps, float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(procs: Procs, port: int, seconds: int, agent: Agent | None = None) -> tuple[float, float]:
    proc = procs.start(["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/index.html"],
                       stdout=subprocess.PIPE, text=True)
    if agent:
        agent.begin()
        while proc.poll() is None:
            agent.sample()
            time.sleep(0.25)
    out, _ = proc.communicate()
    procs.children.remove(proc)
    return parse_wrk(out)


def overhead_figure(procs: Procs, workdir: Path, rounds: int, seconds: int) -> None:
    print(f"\n== 2. overhead on nginx (1 worker, static file), wrk -t1 -c32 -d{seconds}s --latency, "
          f"{rounds} alternating rounds  (load {loadavg()})")
    nginx, port = start_nginx(procs, workdir)
    run_wrk(procs, port, 2)  # warm-up
    res: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
    runs: list[AgentRun] = []
    print(f"{'round':>5} {'mode':>8} {'req/s':>10} {'p99 ms':>8} {'agent cpu%':>10} {'rssMiB':>7} {'captured':>9} {'lost':>8}")
    for i in range(rounds):
        for mode in ("without", "with"):
            if mode == "with":
                agent = Agent(procs, workdir)  # as a user runs it: in-collector
                agent.start()
                time.sleep(0.5)
                rps, p99 = run_wrk(procs, port, seconds, agent)
                run = agent.stop()
                runs.append(run)
                extra = f"{run.cpu_pct:>10.1f} {run.rss_peak:>7.1f} {run.data:>9,} {run.lost:>8,}"
            else:
                rps, p99 = run_wrk(procs, port, seconds)
                extra = ""
            res[mode].append((rps, p99))
            print(f"{i + 1:>5} {mode:>8} {rps:>10,.0f} {p99:>8.2f} {extra}", flush=True)
    procs.stop(nginx, signal.SIGQUIT)
    med = {m: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v)) for m, v in res.items()}
    ratio = med["with"][0] / med["without"][0]
    print(f"median req/s: without {med['without'][0]:,.0f}, with {med['with'][0]:,.0f}, ratio with/without {ratio:.3f} "
          f"({(1 - ratio) * 100:+.1f}% throughput loss; goal <= 10%: {'met' if ratio >= 0.9 else 'NOT met'})")
    print(f"median p99 ms: without {med['without'][1]:.2f}, with {med['with'][1]:.2f}, ratio {med['with'][1] / med['without'][1]:.2f}")
    print(f"agent in the 'with' rounds: cpu% median {statistics.median(r.cpu_pct for r in runs):.1f}, "
          f"peak RSS {max(r.rss_peak for r in runs):.1f} MiB, events captured/round median "
          f"{statistics.median(r.data for r in runs):,.0f}, lost (ring+queue) total {sum(r.lost for r in runs):,}")


class SpanReader:
    """The benchmark prefix's spans topic read from where it ends now: the spans one round's agent emitted."""

    def __init__(self) -> None:
        sys.path.insert(0, str(ROOT))
        from confluent_kafka import Consumer, TopicPartition

        from cli.main import read_settings
        from schemas.catalog import NODE_SPANS
        from schemas.kafka import client_config
        from schemas.registry import SchemaRegistry
        from schemas.serde import AvroDeserializer

        settings = read_settings(None, agent_env())
        self.topic = NODE_SPANS.full_name(settings.topics.prefix)
        self.decode = AvroDeserializer(SchemaRegistry(settings.registry))
        self.consumer = Consumer(client_config(settings.kafka, **{"group.id": "tracetap-bench-spans", "enable.auto.commit": False}))
        self.partitions = [TopicPartition(self.topic, p) for p in self.consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions]
        self.TopicPartition = TopicPartition

    def mark(self) -> dict[int, int]:
        return {tp.partition: self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in self.partitions}

    def since(self, start: dict[int, int]) -> list[dict]:
        end = self.mark()
        self.consumer.assign([self.TopicPartition(self.topic, p, o) for p, o in start.items() if end[p] > o])
        records, left = [], sum(end[p] - o for p, o in start.items())
        while left > 0:
            batch = [m for m in self.consumer.consume(1000, timeout=5) if m.error() is None]
            if not batch:
                break
            records += [self.decode(m.value()) for m in batch if m.offset() < end[m.partition()]]
            left -= len(batch)
        return records


def budget_figure(procs: Procs, workdir: Path, rounds: int, seconds: int, budget: float) -> None:
    print(f"\n== 2b. overhead on nginx with the agent bounded to {budget:g} core (--cpu-budget, in-collector), wrk -t1 -c32 "
          f"-d{seconds}s, {rounds} alternating rounds  (load {loadavg()})")
    nginx, port = start_nginx(procs, workdir)
    run_wrk(procs, port, 2)
    reader = SpanReader()
    res: dict[str, list[tuple[float, float]]] = {"without": [], "budget": []}
    print(f"{'round':>5} {'mode':>8} {'req/s':>10} {'p99 ms':>8} {'agent cpu%':>10} {'ratio':>6} {'spans':>8} {'incomplete':>10} {'lost':>8}")
    total_spans = total_incomplete = 0
    for i in range(rounds):
        for mode in ("without", "budget"):
            if mode == "budget":
                agent = Agent(procs, workdir, [str(TRACETAP), "agent", "ebpf", "--cpu-budget", str(budget)])  # in-collector
                agent.start()
                time.sleep(0.5)
                start = reader.mark()
                rps, p99 = run_wrk(procs, port, seconds, agent)
                time.sleep(0.5)
                run = agent.stop()
                spans = [s for s in reader.since(start) if s["server_port"] == port]
                incomplete = [s for s in spans if s["error_class"] or s["connection_closed"] or s["response_bytes"] <= 0]
                total_spans += len(spans)
                total_incomplete += len(incomplete)
                extra = f"{run.cpu_pct:>10.1f} {run.min_ratio:>6.3f} {len(spans):>8,} {len(incomplete):>10,} {run.lost:>8,}"
            else:
                rps, p99 = run_wrk(procs, port, seconds)
                extra = ""
            res[mode].append((rps, p99))
            print(f"{i + 1:>5} {mode:>8} {rps:>10,.0f} {p99:>8.2f} {extra}", flush=True)
    procs.stop(nginx, signal.SIGQUIT)
    med = {m: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v)) for m, v in res.items()}
    ratio, p99_ratio = med["budget"][0] / med["without"][0], med["budget"][1] / med["without"][1]
    print(f"median req/s: without {med['without'][0]:,.0f}, with the agent at {budget:g} core {med['budget'][0]:,.0f}: ratio {ratio:.3f} "
          f"(goal >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'}); p99 {med['without'][1]:.2f} -> {med['budget'][1]:.2f} ms, "
          f"ratio {p99_ratio:.2f} (goal <= 1.5: {'met' if p99_ratio <= 1.5 else 'NOT met'}); "
          f"spans {total_spans:,}, incomplete {total_incomplete:,}")


# figure 3: profile ------------------------------------------------------------------------------
PROFILE_WRAPPER = """
import cProfile, sys
from producers import emitter
send_loop = emitter.Emitter._send_loop
def profiled_send_loop(self):  # the sender thread (Avro encode + produce) gets its own profile
    prof = cProfile.Profile()
    prof.enable()
    try:
        send_loop(self)
    finally:
        prof.disable()
        prof.dump_stats(sys.argv[2])
emitter.Emitter._send_loop = profiled_send_loop
from cli.main import main
prof = cProfile.Profile()
prof.enable()
try:
    rc = main(["agent", "ebpf", "--raw"])
finally:
    prof.disable()
    prof.dump_stats(sys.argv[1])
sys.exit(rc)
"""


def profile_agent(procs: Procs, workdir: Path, gen: Path, rate: int, seconds: float) -> None:
    """cProfile of both agent threads: main (ring buffer poll -> callbacks -> decode, redact, offer) and
    the emitter's sender (encode + produce); like `python -m cProfile -m cli.main agent ebpf`, plus the thread."""
    main_prof, sender_prof = workdir / "main.prof", workdir / "sender.prof"
    print(f"\n== 3. cProfile of the agent under load: generator at {rate:,}/s for {seconds:g} s  (load {loadavg()})")
    agent = Agent(procs, workdir, [str(PYTHON), "-c", PROFILE_WRAPPER, str(main_prof), str(sender_prof)])
    agent.start()
    time.sleep(0.5)
    ops, elapsed = run_generator(procs, gen, rate, seconds, agent)
    time.sleep(0.5)
    run = agent.stop()
    print(f"(under cProfile: offered {ops / elapsed:,.0f}/s, captured {run.data:,} of {ops:,}, lost {run.lost:,}, "
          f"agent cpu% {run.cpu_pct:.1f}; totals include the BPF compile at start and the drain at exit)")
    for title, path in (("main thread (capture)", main_prof), ("sender thread (emitter)", sender_prof)):
        print(f"-- {title}, top 12 by own time")
        stats = pstats.Stats(str(path)).strip_dirs()
        stats.sort_stats("tottime").print_stats(12)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer/shorter steps and rounds")
    ap.add_argument("--steps", help="offered events/s, comma-separated (default 5000,10000,15000,20000,25000,50000,75000,100000)")
    ap.add_argument("--step-s", type=float, help="seconds per step (default 5, --quick 3)")
    ap.add_argument("--rounds", type=int, help="overhead rounds per mode (default 3, --quick 2)")
    ap.add_argument("--wrk-s", type=int, help="seconds per wrk round (default 10, --quick 5)")
    ap.add_argument("--no-http", action="store_true", help="skip figures 2 and 2b")
    ap.add_argument("--no-syscall", action="store_true", help="skip figure 0")
    ap.add_argument("--no-capture", action="store_true", help="skip figure 1 (and so figure 3)")
    ap.add_argument("--budget", type=float, default=0.5, help="figure 2b: the agent's --cpu-budget in cores (default 0.5; 0 skips 2b)")
    ap.add_argument("--syscall-pairs", type=int, help="figure 0: write+read pairs per round (default 10^6, --quick 2*10^5)")
    ap.add_argument("--no-profile", action="store_true", help="skip figure 3")
    ap.add_argument("--profile-rate", type=int, help="generator rate under cProfile (default: the saturating step)")
    ap.add_argument("--skip-topics", action="store_true", help="do not apply the tracetap-bench. topic catalog first")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")] if args.steps else ([10_000, 50_000, 100_000] if args.quick else
                                                                       [5_000, 10_000, 15_000, 20_000, 25_000, 50_000, 75_000, 100_000])
    step_s = args.step_s or (3.0 if args.quick else 5.0)
    rounds = args.rounds or (2 if args.quick else 3)
    wrk_s = args.wrk_s or (5 if args.quick else 10)
    if os.geteuid() != 0:
        sys.exit("needs root (the agent loads BPF programs)")
    for tool in ["gcc"] + ([] if args.no_http else ["wrk", "nginx"]):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (apt-get install -y gcc wrk nginx-light)")

    procs = PROCS
    workdir = Path(tempfile.mkdtemp(prefix="tracetap-bench-ebpf-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    try:
        print(f"tracetap eBPF agent benchmark: {os.uname().release}, {os.cpu_count()} cpus, load {loadavg()}, workdir {workdir}")
        if not args.skip_topics:
            subprocess.run([str(TRACETAP), "topics", "apply"], cwd=ROOT, env=agent_env(), check=True, stdout=subprocess.DEVNULL)
        if not args.no_syscall:
            syscall_cost_figure(procs, workdir, args.syscall_pairs or (200_000 if args.quick else 1_000_000), 40_000, rounds)
        gen = build_generator(workdir)
        rows = []
        if not args.no_capture:
            marks = Watermarks()
            try:
                rows = capture_figure(procs, workdir, gen, steps, step_s, marks)
            finally:
                marks.close()
        if not args.no_http:
            overhead_figure(procs, workdir, rounds, wrk_s)
            if args.budget:
                budget_figure(procs, workdir, rounds, wrk_s, args.budget)
        paced = [r for r in rows if r["rate"]]
        sat = next((r for r in paced if r["run"].lost or r["run"].data < r["offered"]), None)
        upto = paced[:paced.index(sat) + 1] if sat else []
        python_bound = any(r["run"].cpu_pct >= 80.0 for r in upto)  # lost events while the agent used ~a core
        if not args.no_profile and (python_bound or args.profile_rate):
            profile_agent(procs, workdir, gen, args.profile_rate or sat["rate"], 8.0 if not args.quick else 5.0)
        elif not args.no_profile:
            print("\n(no profile: no step showed loss with the agent near a full core)")
        print(f"\ndone, load {loadavg()}")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
