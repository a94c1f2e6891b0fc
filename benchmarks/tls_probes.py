"""Benchmark: what the eBPF agent's OpenSSL probes (uprobe + uretprobe on SSL_read/SSL_write[_ex]) cost per SSL call.

Not a test (never run in CI, not collected by pytest). Needs root, gcc and OpenSSL 3 (libssl.so.3; its headers are
used if installed, else the program declares the few prototypes it needs). No Kafka: the SocketTracer is loaded in
this process and its events are only counted.

    .venv/bin/python benchmarks/tls_probes.py [--rounds 5] [--calls 80000] [--bytes 100] [--api plain,ex]

A C program (compiled at run time into /tmp) makes a TLS 1.3 client and server in one thread over a loopback TCP
connection (a certificate made for the run), completes the handshake, then times N exchanges of SSL_write(client) +
SSL_read(server) + SSL_write(server) + SSL_read(client) of --bytes each (an HTTP-shaped request and response, so
the kernel ships their payload as it would a real one's), with SSL_read/SSL_write (`plain`) or SSL_read_ex/
SSL_write_ex (`ex`). It runs on CPU 0, the tracer's reader thread on CPU 1, in four modes, alternating order
between rounds:

  baseline  no tracer loaded
  bare      empty BPF programs as uprobe + uretprobe on the same seven OpenSSL calls of the program's libssl, nothing
            else: the kernel's uprobe mechanism alone (int3, and a single step of the first instruction where x86 cannot
            emulate it: OpenSSL 3's SSL_read/SSL_write[_ex] start with `sub $n,%rsp`, which it cannot; on the 2-core
            Firecracker VM this was written on, a probe on such an instruction cost ~17 us, on an emulated one (push,
            nop) ~0.4 us: the single step's debug trap is what a virtual machine makes expensive)
  hooks     SocketTracer with tls_plaintext=False: the syscall hooks only (raw tracepoints, the agent's default);
            OpenSSL's ciphertext read()/write() are captured (byte counts: no parser claims TLS records)
  tls       SocketTracer with tls_plaintext=True (the agent's default): the same hooks plus the OpenSSL uprobes; the
            ciphertext syscalls inside an SSL call are not sent, each call's plaintext is (SSL_READ/SSL_WRITE events)

Both tracer modes use a 64 MiB ring buffer, so a run's events fit even when the reader falls behind (a loss would
shed flows and leave the kernel less to do). Per mode and API it prints the median wall time per SSL call, its CPU
time for comparison, and per call:
  the TLS probes' cost = tls - hooks (uprobe + uretprobe, and a plaintext event in place of the ciphertext
  events of the call's one or two syscalls);
  the uprobe mechanism = bare - baseline (DeepFlow's paper: uprobe + uretprobe about 6 us per call);
  our BPF code = tls - bare: the uprobe programs, the syscall hooks of the call's syscalls (which only tie the
  call to its socket) and the plaintext event (DeepFlow's own code: under 0.5 us);
  the whole agent = tls - baseline, and with TLS plaintext off, hooks - baseline.
The capture check counts the SSL_READ/SSL_WRITE events of the program's pid against the SSL calls it made (warm-up
included).

Absolute numbers are noisy on a small shared machine; compare the differences between commits, and rerun if the
header warns of other BPF programs (another agent's uprobes on the same libssl would be in the baseline too).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from producers.ebpf.agent import SocketTracer  # noqa: E402
from producers.ebpf.events import PAYLOAD_LEN_OFFSET, PID_OFFSET, SYSCALLS, DataEventHeader  # noqa: E402
from producers.ebpf.tls import SSL_PROBES  # noqa: E402
from tests.certs import TestCA  # noqa: E402
from tracetap.config import AgentSettings  # noqa: E402

MODES = ("baseline", "bare", "hooks", "tls")
APIS = ("plain", "ex")
SYSCALL_OFFSET = DataEventHeader.syscall.offset
SSL_READ, SSL_WRITE = SYSCALLS.index("SSL_READ"), SYSCALLS.index("SSL_WRITE")  # 10, 11
POLL_MS = 50
APP_CPU, READER_CPU = 0, 1  # the measured program and the tracer's reader do not share a CPU
WARMUP_EXCHANGES = 256
RING_BUFFER_PAGES = 16_384  # 64 MiB: a default run's events (~200 bytes each) fit without the reader
MAX_MESSAGE_BYTES = 16_000  # one TLS record each (16 KiB of plaintext at most): one SSL_read returns it whole

TLS_BENCH_C = r"""
// A TLS client and server in one thread over loopback TCP: handshake (non-blocking, stepped in turn), then WARMUP
// untimed and EXCHANGES timed rounds of SSL_write(client, REQUEST), SSL_read(server), SSL_write(server, RESPONSE),
// SSL_read(client) on blocking sockets. Prints: timed SSL calls, wall ns, CPU ns, all SSL calls (warm-up included).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#if __has_include(<openssl/ssl.h>) && !defined(OWN_PROTOTYPES)
#include <openssl/ssl.h>
#else  // no libssl-dev: OpenSSL 3's ABI for the calls used here
typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_method_st SSL_METHOD;
#define SSL_FILETYPE_PEM 1
#define SSL_ERROR_WANT_READ 2
#define SSL_ERROR_WANT_WRITE 3
const SSL_METHOD *TLS_method(void);
SSL_CTX *SSL_CTX_new(const SSL_METHOD *method);
int SSL_CTX_use_certificate_chain_file(SSL_CTX *ctx, const char *file);
int SSL_CTX_use_PrivateKey_file(SSL_CTX *ctx, const char *file, int type);
SSL *SSL_new(SSL_CTX *ctx);
int SSL_set_fd(SSL *s, int fd);
int SSL_connect(SSL *s);
int SSL_accept(SSL *s);
int SSL_get_error(const SSL *s, int ret);
int SSL_read(SSL *s, void *buf, int num);
int SSL_write(SSL *s, const void *buf, int num);
int SSL_read_ex(SSL *s, void *buf, size_t num, size_t *readbytes);
int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written);
#endif

static long long ns(clockid_t c) { struct timespec t; clock_gettime(c, &t); return t.tv_sec * 1000000000LL + t.tv_nsec; }
static void die(const char *what) { fprintf(stderr, "tls_bench: %s\n", what); exit(1); }

static int use_ex;

static size_t ssl_write(SSL *s, const char *buf, size_t n) {
    if (use_ex) { size_t done = 0; return SSL_write_ex(s, buf, n, &done) == 1 ? done : 0; }
    int ret = SSL_write(s, buf, (int)n);
    return ret > 0 ? (size_t)ret : 0;
}

static size_t ssl_read(SSL *s, char *buf, size_t n) {
    if (use_ex) { size_t done = 0; return SSL_read_ex(s, buf, n, &done) == 1 ? done : 0; }
    int ret = SSL_read(s, buf, (int)n);
    return ret > 0 ? (size_t)ret : 0;
}

// One exchange; each read must return the whole message (one record of a few hundred bytes at most).
static void exchange(SSL *client, SSL *server, const char *request, size_t request_len, const char *response, size_t response_len) {
    char buf[16384];
    if (ssl_write(client, request, request_len) != request_len) die("client write");
    if (ssl_read(server, buf, sizeof(buf)) != request_len) die("server read");
    if (ssl_write(server, response, response_len) != response_len) die("server write");
    if (ssl_read(client, buf, sizeof(buf)) != response_len) die("client read");
}

static void set_blocking(int fd, int blocking) {
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, blocking ? flags & ~O_NONBLOCK : flags | O_NONBLOCK);
}

// Steps: one thread cannot block in the client's handshake while the server's has not run.
static int handshake_step(SSL *s, int (*step)(SSL *), int *done) {
    if (*done) return 0;
    int ret = step(s);
    if (ret == 1) { *done = 1; return 0; }
    int err = SSL_get_error(s, ret);
    return err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE ? 0 : -1;
}

int main(int argc, char **argv) {
    if (argc != 8) die("usage: tls_bench CERT KEY EXCHANGES WARMUP plain|ex REQUEST RESPONSE");
    long long exchanges = atoll(argv[3]), warmup = atoll(argv[4]);
    use_ex = strcmp(argv[5], "ex") == 0;
    const char *request = argv[6], *response = argv[7];
    size_t request_len = strlen(request), response_len = strlen(response);

    int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    if (bind(listener, (void *)&addr, len) || listen(listener, 1) || getsockname(listener, (void *)&addr, &len)) die("listen");
    int client_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(client_fd, (void *)&addr, len)) die("connect");
    int server_fd = accept(listener, NULL, NULL);
    if (server_fd < 0) die("accept");
    // Nagle could hold a 100-byte write back for a delayed ACK: 40 ms in a loop that never waits otherwise
    setsockopt(client_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(server_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    SSL_CTX *server_ctx = SSL_CTX_new(TLS_method()), *client_ctx = SSL_CTX_new(TLS_method());
    if (!server_ctx || !client_ctx) die("SSL_CTX_new");
    if (SSL_CTX_use_certificate_chain_file(server_ctx, argv[1]) != 1 || SSL_CTX_use_PrivateKey_file(server_ctx, argv[2], SSL_FILETYPE_PEM) != 1)
        die("cannot load the certificate or key");
    SSL *client = SSL_new(client_ctx), *server = SSL_new(server_ctx);  // the client does not verify: not what is measured
    SSL_set_fd(client, client_fd);
    SSL_set_fd(server, server_fd);
    set_blocking(client_fd, 0);
    set_blocking(server_fd, 0);
    int client_done = 0, server_done = 0;
    for (int steps = 0; !(client_done && server_done); steps++) {
        if (steps > 1000 || handshake_step(client, SSL_connect, &client_done) || handshake_step(server, SSL_accept, &server_done))
            die("handshake");
    }
    set_blocking(client_fd, 1);
    set_blocking(server_fd, 1);

    for (long long i = 0; i < warmup; i++) exchange(client, server, request, request_len, response, response_len);
    long long wall = ns(CLOCK_MONOTONIC), cpu = ns(CLOCK_PROCESS_CPUTIME_ID);
    for (long long i = 0; i < exchanges; i++) exchange(client, server, request, request_len, response, response_len);
    cpu = ns(CLOCK_PROCESS_CPUTIME_ID) - cpu;
    wall = ns(CLOCK_MONOTONIC) - wall;
    printf("%lld %lld %lld %lld\n", exchanges * 4, wall, cpu, (exchanges + warmup) * 4);
    return 0;
}
"""


@dataclass(frozen=True, slots=True)
class ProgramRun:
    """One run of the C program: its timed SSL calls and their times, and every SSL call it made."""

    pid: int
    calls: int
    wall_ns: int
    cpu_ns: int
    all_calls: int

    @property
    def wall_ns_per_call(self) -> float:
        return self.wall_ns / self.calls

    @property
    def cpu_ns_per_call(self) -> float:
        return self.cpu_ns / self.calls


@dataclass
class Program:
    """The compiled C program, its certificate and the two messages."""

    exe: Path
    cert_file: Path
    key_file: Path
    request: str
    response: str

    def run(self, exchanges: int, api: str) -> ProgramRun:
        argv = [str(self.exe), str(self.cert_file), str(self.key_file), str(exchanges), str(WARMUP_EXCHANGES), api, self.request, self.response]
        pin = (lambda: os.sched_setaffinity(0, {APP_CPU})) if os.cpu_count() > 1 else None
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pin)
        out, err = proc.communicate(timeout=600)
        if proc.returncode:
            raise RuntimeError(f"{self.exe.name} {api} failed (exit {proc.returncode}): {err.strip()}")
        calls, wall_ns, cpu_ns, all_calls = (int(x) for x in out.split())
        return ProgramRun(proc.pid, calls, wall_ns, cpu_ns, all_calls)


def build_program(workdir: Path, payload_bytes: int) -> Program:
    """Compile the program (against libssl.so.3 by soname: no libssl-dev needed) and make its certificate."""
    src, exe = workdir / "tls_bench.c", workdir / "tls_bench"
    src.write_text(TLS_BENCH_C)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src), "-l:libssl.so.3", "-l:libcrypto.so.3"], check=True)
    issued = TestCA(workdir / "pki").issue("server")
    return Program(exe, issued.cert_file, issued.key_file, *http_messages(payload_bytes))


def http_messages(size: int) -> tuple[str, str]:
    """An HTTP request and response of exactly `size` bytes each (the kernel's parsers claim them: payload ships)."""
    request_head, request_tail = "GET /bench HTTP/1.1\r\nHost: bench\r\nX-Pad: ", "\r\n\r\n"
    response_head = "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n"  # + the body's length in digits
    smallest = len(request_head) + len(request_tail) + 1
    if not smallest <= size <= MAX_MESSAGE_BYTES:
        raise SystemExit(f"--bytes {size} is not within {smallest}..{MAX_MESSAGE_BYTES}")
    body = next(n for digits in range(1, 6) if len(str(n := size - len(response_head) - digits)) == digits)
    request = request_head + "p" * (size - len(request_head) - len(request_tail)) + request_tail
    return request, f"HTTP/1.1 200 OK\r\nContent-Length: {body}\r\n\r\n" + "b" * body


def libssl_of(exe: Path) -> str:
    """The libssl file the program loads (ldd), resolved: the tracer must have probed this one."""
    for line in subprocess.run(["ldd", str(exe)], capture_output=True, text=True, check=True).stdout.splitlines():
        if line.strip().startswith("libssl") and "=>" in line:
            return os.path.realpath(line.split("=>")[1].split("(")[0].strip())
    raise RuntimeError(f"{exe} does not link a libssl")


class BareProbes:
    """Empty BPF programs as uprobe + uretprobe on the tracer's OpenSSL symbols of one libssl: the mechanism's cost."""

    def __init__(self, libssl: str) -> None:
        from bcc import BPF  # Debian's python3-bpfcc, linked into the venv

        self.bpf = BPF(text="int empty(struct pt_regs *ctx) { return 0; }")
        for symbol in SSL_PROBES:
            self.bpf.attach_uprobe(name=libssl, sym=symbol, fn_name="empty")
            self.bpf.attach_uretprobe(name=libssl, sym=symbol, fn_name="empty")

    def __enter__(self) -> BareProbes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bpf.cleanup()


class Capture:
    """A SocketTracer loaded for one mode, drained by a reader thread on its own CPU; events counted per pid."""

    def __init__(self, settings: AgentSettings) -> None:
        self.events: Counter[tuple[int, int, bool]] = Counter()  # (pid, syscall, has payload) -> events
        started = time.monotonic()
        self.tracer = SocketTracer(settings, set(), self._on_data, lambda event: None)
        self.load_s = time.monotonic() - started
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name="tracer-reader", daemon=True)

    def __enter__(self) -> Capture:
        self._reader.start()
        return self

    def _on_data(self, events: list[bytes]) -> None:
        count = self.events
        for raw in events:  # only what the report needs: the reader must keep up
            count[int.from_bytes(raw[PID_OFFSET:PID_OFFSET + 4], "little"), raw[SYSCALL_OFFSET],
                  raw[PAYLOAD_LEN_OFFSET:PAYLOAD_LEN_OFFSET + 4] != b"\0\0\0\0"] += 1

    def _read(self) -> None:
        if os.cpu_count() > 1:
            os.sched_setaffinity(0, {READER_CPU})  # this thread only
        while not self._stop.is_set():
            self.tracer.poll(POLL_MS)

    def probed(self, path: str) -> bool:
        st = os.stat(path)
        return self.tracer.tls is not None and (st.st_dev, st.st_ino) in self.tracer.tls.files

    def counters(self) -> dict[str, int]:
        return self.tracer.kernel_counters()

    def of_pid(self, pid: int) -> tuple[int, int, int]:
        """(SSL_READ/SSL_WRITE events, other data events, events with payload) of one process."""
        ssl = sum(n for (p, sc, _), n in self.events.items() if p == pid and sc in (SSL_READ, SSL_WRITE))
        other = sum(n for (p, sc, _), n in self.events.items() if p == pid and sc not in (SSL_READ, SSL_WRITE))
        payload = sum(n for (p, _, has), n in self.events.items() if p == pid and has)
        return ssl, other, payload

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._reader.join()
        try:
            self.tracer.drain()  # from this thread: every CPU's last batch, the program's CPU included
        finally:
            self.tracer.close()


@dataclass
class Row:
    """One program run in one mode, with what the tracer saw of it."""

    mode: str
    api: str
    run: ProgramRun
    ssl_events: int = 0
    syscall_events: int = 0
    payload_events: int = 0
    lost: int = 0
    untied: int = 0


LOSS_KEYS = ("data_lost", "shed_events")


def measure_mode(program: Program, mode: str, apis: list[str], exchanges: int) -> tuple[list[Row], float]:
    """Run the program once per API in `mode`; returns the rows and the tracer's load time (0 for the baseline)."""
    if mode == "baseline":
        return [Row(mode, api, program.run(exchanges, api)) for api in apis], 0.0
    libssl = libssl_of(program.exe)
    if mode == "bare":
        with BareProbes(libssl):
            return [Row(mode, api, program.run(exchanges, api)) for api in apis], 0.0
    with Capture(AgentSettings(tls_plaintext=mode == "tls", ring_buffer_pages=RING_BUFFER_PAGES)) as capture:
        if mode == "tls" and not capture.probed(libssl):
            raise RuntimeError(f"the tracer did not probe {libssl}, which the program loads: probed {sorted(capture.tracer.tls.files.values())}")
        time.sleep(0.2)  # the reader thread settles on its CPU
        runs = []
        for api in apis:
            before = capture.counters()
            run = program.run(exchanges, api)
            after = capture.counters()
            runs.append((api, run, sum(after[k] - before[k] for k in LOSS_KEYS), after["tls_untied_calls"] - before["tls_untied_calls"]))
    rows = []
    for api, run, lost, untied in runs:
        ssl, other, payload = capture.of_pid(run.pid)
        rows.append(Row(mode, api, run, ssl, other, payload, lost, untied))
    return rows, capture.load_s


def other_bpf_holders() -> list[str]:
    """Other processes holding BPF programs (another agent, a test's tracer): their probes would skew every mode."""
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd) == "anon_inode:bpf-prog" for fd in (proc / "fd").iterdir()):
                holders.append(f"{proc.name}({(proc / 'comm').read_text().strip()})")
        except OSError:
            continue
    return holders


def conditions() -> str:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    holders = other_bpf_holders()
    return f"load {load}" + (f"; WARNING: other processes hold BPF programs: {', '.join(holders)}" if holders else "")


def print_row(i: int, row: Row) -> None:
    run = row.run
    traced = "" if row.mode in ("baseline", "bare") else (f"{row.ssl_events:>10,} {row.syscall_events:>10,} "
                                                          f"{row.payload_events:>9,} {row.lost:>6,} {row.untied:>7,}")
    print(f"{i:>5} {row.mode:>8} {row.api:>5} {run.calls:>9,} {run.wall_ns_per_call:>9.0f} {run.cpu_ns_per_call:>9.0f} {traced}", flush=True)


def report(rows: list[Row], apis: list[str]) -> None:
    print("\nmedians, ns per SSL call: wall [CPU]")
    print(f"{'api':>5} " + " ".join(f"{m:>14}" for m in MODES) + f" {'tls/baseline':>12}")
    for api in apis:
        wall, cpu = _medians(rows, api, "wall_ns_per_call"), _medians(rows, api, "cpu_ns_per_call")
        print(f"{api:>5} " + " ".join(f"{wall[m]:>7.0f} [{cpu[m]:>5.0f}]" for m in MODES) + f" {wall['tls'] / wall['baseline']:>12.2f}")
    print("\ncost per SSL call, us: wall [CPU]")
    for api in apis:
        wall, cpu = _medians(rows, api, "wall_ns_per_call"), _medians(rows, api, "cpu_ns_per_call")

        def cost(mode: str, base: str) -> str:
            return f"{(wall[mode] - wall[base]) / 1000:.2f} [{(cpu[mode] - cpu[base]) / 1000:.2f}]"

        print(f"{api:>5}: TLS probes (tls - hooks) {cost('tls', 'hooks')} = uprobe mechanism (bare - baseline) {cost('bare', 'baseline')} "
              f"(DeepFlow: ~6 us) + our BPF code (tls - bare) {cost('tls', 'bare')} (DeepFlow: < 0.5 us) - the ciphertext events no "
              f"longer sent (hooks - baseline) {cost('hooks', 'baseline')}; whole agent (tls - baseline) {cost('tls', 'baseline')} "
              f"on a baseline of {wall['baseline'] / 1000:.2f} us")
    tls_rows, hooks_rows = [r for r in rows if r.mode == "tls"], [r for r in rows if r.mode == "hooks"]
    made, ssl = sum(r.run.all_calls for r in tls_rows), sum(r.ssl_events for r in tls_rows)
    print(f"capture in the tls runs: {ssl:,} SSL_READ/SSL_WRITE events for the {made:,} SSL calls made ({ssl / made:.1%}), "
          f"{sum(r.payload_events for r in tls_rows):,} with payload, {sum(r.syscall_events for r in tls_rows):,} other events; "
          f"{sum(r.lost for r in tls_rows):,} lost or shed, {sum(r.untied for r in tls_rows):,} SSL calls untied")
    print(f"capture in the hooks runs: {sum(r.syscall_events for r in hooks_rows):,} ciphertext syscall events for the "
          f"{sum(r.run.all_calls for r in hooks_rows):,} SSL calls made; {sum(r.lost for r in hooks_rows):,} lost or shed")


def _medians(rows: list[Row], api: str, per_call: str) -> dict[str, float]:
    return {m: statistics.median(getattr(r.run, per_call) for r in rows if r.mode == m and r.api == api) for m in MODES}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the four modes, alternating order (default 5)")
    ap.add_argument("--calls", type=int, default=80_000, help="timed SSL calls per run, 4 per exchange (default 80000)")
    ap.add_argument("--bytes", type=int, default=100, help="size of each request and response (default 100)")
    ap.add_argument("--api", default="plain,ex", help="plain (SSL_read/SSL_write), ex (SSL_read_ex/SSL_write_ex), or both (default plain,ex)")
    args = ap.parse_args()
    apis = args.api.split(",")
    if not apis or set(apis) - set(APIS):
        sys.exit(f"--api {args.api}: choose from {', '.join(APIS)}")
    if os.geteuid() != 0:
        sys.exit("needs root (the tracer loads BPF programs)")
    if not shutil.which("gcc"):
        sys.exit("gcc not found (apt-get install -y gcc)")
    exchanges = max(1, args.calls // 4)

    workdir = Path(tempfile.mkdtemp(prefix="tracetap-bench-tls-"))
    try:
        program = build_program(workdir, args.bytes)
        print(f"TLS probe cost: {os.uname().release}, {os.cpu_count()} cpus, program on CPU {APP_CPU} linking {libssl_of(program.exe)}, "
              f"reader on CPU {READER_CPU}; {exchanges * 4:,} timed SSL calls of {args.bytes} bytes per run "
              f"(+{WARMUP_EXCHANGES * 4} warm-up), {args.rounds} rounds; {conditions()}")
        program.run(exchanges // 10 or 1, apis[0])  # warm-up: page cache, CPU frequency
        print(f"{'round':>5} {'mode':>8} {'api':>5} {'calls':>9} {'ns/call':>9} {'cpu ns':>9} {'ssl events':>10} "
              f"{'sys events':>10} {'w/payload':>9} {'lost':>6} {'untied':>7}")
        rows: list[Row] = []
        load_s = []
        for i in range(args.rounds):
            order = MODES if i % 2 == 0 else MODES[::-1]
            for mode in order:
                mode_apis = apis if (i // 2) % 2 == 0 else apis[::-1]  # the API order alternates too
                mode_rows, loaded_s = measure_mode(program, mode, mode_apis, exchanges)
                if loaded_s:
                    load_s.append(loaded_s)
                for row in mode_rows:
                    print_row(i + 1, row)
                rows += mode_rows
        report(rows, apis)
        print(f"tracer load (BPF compile + attach) median {statistics.median(load_s):.1f} s; done, {conditions()}")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
