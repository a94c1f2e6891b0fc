"""`tracetap agent ebpf`: compiles socket_trace.c with this kernel's BTF offsets, fills its filter
maps, polls its ring buffers, redacts payloads and hands raw events to the Emitter.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from producers.ebpf.batches import BATCH_NS, FLUSH_HZ, SocketOrder, split_batch
from producers.ebpf.btf import VMLINUX_BTF, Btf, BtfError
from producers.ebpf.budget import BudgetError, CpuQuota, Shedding
from producers.ebpf.events import (COUNTERS, PID_OFFSET, SAMPLE_ALL, Clock, DataEventEncoder, LifecycleEvent, decode_lifecycle,
                                   sample_threshold)
from producers.ebpf.profiler import ProfileReporter
from producers.ebpf.tls import SslProbes
from producers.collector import NodeCollector
from producers.common import excluded_ports
from producers.emitter import Emitter
from producers.resources import ResourceTracker
from schemas.catalog import NODE_SPANS, SOCKET_DATA, SOCKET_LIFECYCLE
from tracetap.config import AgentSettings, Settings
from tracetap.errors import TracetapError
from tracetap.model import Span
from tracetap.redact import Redactors
from tracetap.stages import StageConfig

log = logging.getLogger("tracetap.agent.ebpf")

# define -> (struct, member path); every offset the BPF program uses comes from BTF.
KERNEL_MEMBERS: dict[str, tuple[str, str, int]] = {  # (struct, member, bytes the program reads)
    "OFF_TASK_FILES": ("task_struct", "files", 8),
    "OFF_FILES_FDT": ("files_struct", "fdt", 8),
    "OFF_FDT_MAX_FDS": ("fdtable", "max_fds", 4),
    "OFF_FDT_FD": ("fdtable", "fd", 8),
    "OFF_FILE_F_INODE": ("file", "f_inode", 8),
    "OFF_FILE_PRIVATE_DATA": ("file", "private_data", 8),
    "OFF_INODE_I_MODE": ("inode", "i_mode", 2),
    "OFF_INODE_I_INO": ("inode", "i_ino", 8),
    "OFF_SOCKET_SK": ("socket", "sk", 8),
    "OFF_SKC_FAMILY": ("sock", "__sk_common.skc_family", 2),
    "OFF_SKC_NUM": ("sock", "__sk_common.skc_num", 2),
    "OFF_SKC_DPORT": ("sock", "__sk_common.skc_dport", 2),
    "OFF_SKC_DADDR": ("sock", "__sk_common.skc_daddr", 4),
    "OFF_SKC_RCV_SADDR": ("sock", "__sk_common.skc_rcv_saddr", 4),
    "OFF_SKC_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr", 16),
    "OFF_SKC_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr", 16),
    "OFF_SKC_NET": ("sock", "__sk_common.skc_net", 8),
    "OFF_SK_PROTOCOL": ("sock", "sk_protocol", 2),
    "OFF_SK_ERR": ("sock", "sk_err", 4),
    "OFF_TCP_WRITE_SEQ": ("tcp_sock", "write_seq", 4),
    "OFF_TCP_COPIED_SEQ": ("tcp_sock", "copied_seq", 4),
    "OFF_TCP_BYTES_ACKED": ("tcp_sock", "bytes_acked", 8),
    "OFF_TCP_BYTES_RECEIVED": ("tcp_sock", "bytes_received", 8),
    "OFF_TCP_TOTAL_RETRANS": ("tcp_sock", "total_retrans", 4),
}


POLL_BUDGET = 8192  # events handled per poll before the loop checks signals, deadline and counters
POLL_MAX_S = 0.1  # ... or this long
POLL_TIMEOUT_MS = 50  # the longest an event waits for the reader when the kernel does not wake it (batched wakeups)
CONTROL_INTERVAL_S = 0.5  # how often the kernel counters are read and the shedding ratio adapted
# Kernel counters reported in agent-stats (as deltas): losses and what shedding left out.
REPORTED_COUNTERS = ("data_lost", "lifecycle_lost", "shed_events", "shed_requests", "loss_markers_lost", "unknown_protocol_events",
                     "continuation_events", "tls_ciphertext_events", "tls_untied_calls")


class AgentError(TracetapError):
    """The agent cannot start here; the message says which requirement is missing."""


@dataclass
class CaptureStats:
    data: int = 0
    lifecycle: int = 0
    spans: int = 0  # in-collector mode
    min_sample_ratio: float = 1.0
    kernel_counters: dict[str, int] = field(default_factory=dict)


def kernel_defines(btf: Btf) -> dict[str, int]:
    """The OFF_* defines for socket_trace.c, checked against the sizes the program reads."""
    defines = {}
    for name, (struct, path, size) in KERNEL_MEMBERS.items():
        member = btf.member(struct, path)
        if member.bit_size or member.size != size:
            raise BtfError(f"{struct}.{path} is {member.size} bytes{' (a bitfield)' if member.bit_size else ''} in this kernel, "
                           f"the tracer reads {size}: the agent does not support this kernel layout yet")
        defines[name] = member.offset
    # possible_net_t holds one pointer; net.ns.inum is the namespace's inode number.
    defines["OFF_NET_NS_INUM"] = btf.member("net", "ns").offset + btf.member("ns_common", "inum").offset
    return defines


# x86_64 syscall numbers (the ABI: arch/x86/entry/syscalls/syscall_64.tbl) for the raw-tracepoint hooks,
# and where pt_regs keeps the syscall's number and its arguments (offsets read from BTF).
X86_64_SYSCALLS = {"NR_READ": 0, "NR_WRITE": 1, "NR_READV": 19, "NR_WRITEV": 20, "NR_CONNECT": 42, "NR_ACCEPT": 43,
                   "NR_SENDTO": 44, "NR_RECVFROM": 45, "NR_SENDMSG": 46, "NR_RECVMSG": 47, "NR_ACCEPT4": 288,
                   "NR_RECVMMSG": 299, "NR_SENDMMSG": 307, "NR_GETPPID": 110}
X86_64_ARGS = {"OFF_ARG0": "di", "OFF_ARG1": "si", "OFF_ARG2": "dx", "OFF_ARG3": "r10", "OFF_ARG4": "r8", "OFF_SYSCALL_NR": "orig_ax"}


def syscall_hook_defines(btf: Btf, raw: bool, machine: str | None = None) -> dict[str, int]:
    """RAW_SYSCALLS and what it needs on x86_64; nothing (one tracepoint per syscall) elsewhere or when not wanted."""
    if not raw or (machine or platform.machine()) != "x86_64":
        return {}
    defines = {"RAW_SYSCALLS": 1, **X86_64_SYSCALLS}
    for name, register in X86_64_ARGS.items():
        defines[name] = btf.member("pt_regs", register).offset
    return defines


def check_requirements(btf_path: Path = Path(VMLINUX_BTF)) -> None:
    """One clear line for each thing the agent cannot do without."""
    if os.geteuid() != 0:
        raise AgentError("the eBPF agent must run as root (it loads BPF programs and reads other processes' sockets)")
    if not btf_path.exists():
        raise AgentError(f"{btf_path} is missing: this kernel has no BTF, so struct offsets cannot be read safely "
                         "(a kernel built with CONFIG_DEBUG_INFO_BTF=y is required)")
    if not Path("/sys/kernel/tracing/events/syscalls").is_dir():
        raise AgentError("tracefs is not mounted at /sys/kernel/tracing (mount -t tracefs nodev /sys/kernel/tracing; make setup does it)")
    build = Path("/lib/modules") / platform.release() / "build"
    if not build.exists():
        raise AgentError(f"{build} is missing: bcc compiles against kernel headers "
                         "(make setup installs linux-headers-amd64 and links it there)")


class SocketTracer:
    """The loaded BPF program: build with the agent settings, then poll(). `on_data` gets data events as
    lists, each socket's in the order the kernel captured them (the kernel sends them in per-CPU batches)."""

    def __init__(self, agent: AgentSettings, ports: set[int], on_data: Callable[[list[bytes]], None],
                 on_lifecycle: Callable[[LifecycleEvent], None]) -> None:
        from bcc import BPF, PerfSWConfig, PerfType  # Debian's python3-bpfcc, linked into the venv

        btf = Btf.load()
        defines = kernel_defines(btf)
        defines.update(syscall_hook_defines(btf, agent.raw_syscall_hooks))
        defines.update({
            "PAYLOAD_MAX": agent.payload_bytes,
            "PAYLOAD_CAPTURE": agent.payload_bytes,
            "DATA_RINGBUF_PAGES": agent.ring_buffer_pages,
            "LIFECYCLE_RINGBUF_PAGES": max(64, agent.ring_buffer_pages // 8),
            "BATCH_NS": f"{BATCH_NS}ULL",
        })
        if agent.unknown_protocol_payloads:
            defines["PAYLOAD_ALL_PROTOCOLS"] = 1
        if agent.continuation_payloads:
            defines["PAYLOAD_CONTINUATIONS"] = 1
        source = resources.files("producers.ebpf").joinpath("socket_trace.c").read_text()
        started = time.monotonic()
        self.bpf = BPF(text=source, cflags=[f"-D{k}={v}" for k, v in defines.items()] + ["-Wno-unused-function"])
        log.info("bpf program loaded compile_s=%.2f payload_bytes=%d syscall_hooks=%s", time.monotonic() - started, agent.payload_bytes,
                 "raw" if "RAW_SYSCALLS" in defines else "tracepoints")
        self._fill_filters(agent, ports)
        self._on_data = on_data
        self._on_lifecycle = on_lifecycle
        self._released: list[bytes] = []
        self.order = SocketOrder(self._released.append)
        self._polled = self._records = 0
        self._poll_until = 0.0
        self._cut_short = False
        self.bpf["data_events"].open_ring_buffer(self._data_callback)
        self.bpf["loss_markers"].open_ring_buffer(self._marker_callback)
        self.bpf["lifecycle_events"].open_ring_buffer(self._lifecycle_callback)
        # Each CPU sends its batch once the first event is BATCH_NS old, even if no other event comes.
        self.bpf.attach_perf_event(ev_type=PerfType.SOFTWARE, ev_config=PerfSWConfig.CPU_CLOCK, fn_name=b"flush_stale",
                                   sample_freq=FLUSH_HZ)
        self.tls: SslProbes | None = None
        if agent.tls_plaintext:
            self.tls = SslProbes(self._attach_uprobe)
            self.tls.start()

    def _attach_uprobe(self, path: str, symbol: str, fn_name: str, retprobe: bool) -> None:
        attach = self.bpf.attach_uretprobe if retprobe else self.bpf.attach_uprobe
        attach(name=path, sym=symbol, fn_name=fn_name)

    def _fill_filters(self, agent: AgentSettings, ports: set[int]) -> None:
        one = ctypes.c_uint8(1)
        pids = self.bpf["excluded_pids"]
        for pid in {os.getpid(), *agent.exclude_pids}:
            pids[ctypes.c_uint32(pid)] = one
        port_map = self.bpf["excluded_ports"]
        for port in ports:
            port_map[ctypes.c_uint16(port)] = one
        flags = 0
        if agent.include_netns:  # bit values mirror FILTER_* in socket_trace.c
            netns = self.bpf["included_netns"]
            for name in agent.include_netns:
                netns[ctypes.c_uint32(_netns_inode(name))] = one
            flags |= 1
        if agent.exclude_comms:
            comms = self.bpf["excluded_comms"]
            for comm in agent.exclude_comms:
                key = comms.Key()
                key.comm = comm.encode()[:15]
                comms[key] = one
            flags |= 2
        if agent.include_cgroups:
            cgroups = self.bpf["included_cgroups"]
            for path in agent.include_cgroups:
                cgroups[ctypes.c_uint64(_cgroup_id(path))] = one
            flags |= 4
        self.bpf["sampling"][ctypes.c_int(0)] = ctypes.c_uint32(SAMPLE_ALL)
        flags |= 8  # FILTER_ARMED, last: the program captures nothing until the filters above are in place
        self.bpf["filter_flags"][ctypes.c_uint32(0)] = ctypes.c_uint32(flags)
        log.info("filters set excluded_ports=%s excluded_pids=%d include_netns=%s exclude_comms=%s include_cgroups=%s",
                 sorted(ports), len(agent.exclude_pids) + 1, list(agent.include_netns) or "all",
                 list(agent.exclude_comms) or "none", list(agent.include_cgroups) or "all")

    def _data_callback(self, ctx: Any, data: int, size: int) -> int:
        now = time.monotonic_ns()
        add = self.order.add
        events = split_batch(ctypes.string_at(data, size))
        for raw in events:  # header + payload; decoded on the emitter's thread
            add(raw, now)
        self._hand_over()
        return self._budget_left(len(events))

    def _marker_callback(self, ctx: Any, data: int, size: int) -> int:
        self._on_data([ctypes.string_at(data, size)])  # a header-only data event: the socket's exchange was lost
        return self._budget_left(1)

    def _hand_over(self) -> None:
        if self._released:
            events = self._released[:]
            self._released.clear()
            self._on_data(events)

    def _lifecycle_callback(self, ctx: Any, data: int, size: int) -> int:
        self._on_lifecycle(LifecycleEvent.from_address(data))
        return self._budget_left(1)

    def _budget_left(self, events: int) -> int:
        # Under sustained load libbpf keeps consuming and poll never returns; a negative return
        # ends this poll (the record counts as consumed), so signals, counters and the shedding
        # controller get their turn, on time even when a CPU quota slows the agent down.
        self._polled += events
        self._records += 1
        if self._polled >= POLL_BUDGET or (not self._records & 15 and time.monotonic() >= self._poll_until):
            return -1
        return 0

    def poll(self, timeout_ms: int) -> None:
        """Wait up to timeout_ms for a wakeup, then drain: the kernel wakes the reader only every WAKEUP_BYTES.
        After a poll cut short by its budget, the ring still holds a backlog: no waiting then."""
        self._polled = self._records = 0
        self._poll_until = time.monotonic() + POLL_MAX_S
        self.bpf.ring_buffer_poll(0 if self._cut_short else timeout_ms)
        self.kick_idle_cpus()
        drained_from = time.monotonic_ns()
        if not self._over_budget():
            self.bpf.ring_buffer_consume()
        self._cut_short = self._over_budget()
        self.order.expire(None if self._cut_short else drained_from, time.monotonic_ns())
        self._hand_over()

    def drain(self) -> None:
        """At the end of capture: wait for every CPU's batch to be sent, read them, and release what waits for order."""
        time.sleep(BATCH_NS / 1e9 + 2 / FLUSH_HZ)  # a CPU that runs something sends its batch on its flush tick ...
        self.kick_idle_cpus(everything=True)  # ... and an idle one when woken (its batch is BATCH_NS old by now)
        for _ in range(64):
            self.poll(0)
            if not self._cut_short:
                break
        self.order.expire(None, time.monotonic_ns(), everything=True)
        self._hand_over()

    def kick_idle_cpus(self, everything: bool = False) -> int:
        """Wake the CPUs whose batch is due (its first event BATCH_NS old; `everything`: any not empty) with a getppid()
        run there, which sends it: flush_stale's cpu-clock event ticks only on a CPU that runs something, so a batch
        left on a CPU gone idle would wait for its next task. Returns how many CPUs were woken."""
        pending = self.bpf["batch_pending"][ctypes.c_int(0)]
        due_before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) - (0 if everything else BATCH_NS + 1_000_000_000 // FLUSH_HZ)
        due = [cpu for cpu, first_ns in enumerate(pending) if first_ns and (everything or first_ns <= due_before)]
        if not due:
            return 0
        allowed = os.sched_getaffinity(0)
        try:
            for cpu in due:
                if cpu in allowed:
                    os.sched_setaffinity(0, {cpu})  # this thread only
                    os.getppid()
        finally:
            os.sched_setaffinity(0, allowed)
        return len(due)

    def _over_budget(self) -> bool:
        return self._polled >= POLL_BUDGET or time.monotonic() >= self._poll_until

    def close(self) -> None:
        """Detach the programs and free the maps (process exit does the same)."""
        self.bpf.cleanup()

    def set_sample_ratio(self, ratio: float) -> None:
        """Capture this share of flows from each one's next request on (flows are kept or shed whole)."""
        self.bpf["sampling"][ctypes.c_int(0)] = ctypes.c_uint32(sample_threshold(ratio))

    def kernel_counters(self) -> dict[str, int]:
        table = self.bpf["counters"]
        return {name: sum(table[ctypes.c_int(i)]) for i, name in enumerate(COUNTERS)}


def _netns_inode(name: str) -> int:
    """A namespace given as an inode number or an `ip netns` name."""
    if name.isdigit():
        return int(name)
    path = Path("/run/netns") / name
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        raise AgentError(f"network namespace {name!r} not found under /run/netns (agent.include_netns)") from None


def _cgroup_id(path: str) -> int:
    """A cgroup v2 id is its directory's inode number. An absolute path names a directory in any
    cgroup2 mount; a relative one is under /sys/fs/cgroup."""
    full = Path(path) if path.startswith("/") else Path("/sys/fs/cgroup") / path
    try:
        return full.stat().st_ino
    except FileNotFoundError:
        raise AgentError(f"cgroup {full} not found (agent.include_cgroups)") from None


class EbpfAgent:
    """Capture → decode → redact → Emitter, until stop() or a signal."""

    def __init__(self, settings: Settings, emitter: Emitter, host: str) -> None:
        self._emitter = emitter
        self._host = host
        self._clock = Clock.now()
        self._trace_prefix = random.getrandbits(22)  # ids stay unique across agent restarts and hosts
        self._redactors = Redactors(settings.agent.redaction_rules())
        self._stopping = False
        self.stats = CaptureStats()
        self._kernel_seen: dict[str, int] = {}
        self._tracer = SocketTracer(settings.agent, excluded_ports(settings), self._on_data, self._on_lifecycle)
        self._resources = ResourceTracker(emitter, host, settings.agent.resource_interval_s)
        self._encoder = DataEventEncoder(SOCKET_DATA.schema(), host, self._clock, self._trace_prefix, self._redact)
        emitter.register_raw(SOCKET_DATA, self._encoder.encode)
        self._collector = NodeCollector(self._emit_span, StageConfig.from_settings(settings.streams)) if settings.agent.in_collector else None
        self._reported: dict[str, int] = {}
        self._shedding = Shedding(settings.agent.cpu_budget_cores)
        self._cpu_budget = settings.agent.cpu_budget_cores
        self._tls_rescan_s = settings.agent.tls_rescan_s
        self.profiles: ProfileReporter | None = None
        if settings.agent.profiling:
            self.profiles = ProfileReporter(settings.agent, emitter, host, {_cgroup_id(p) for p in settings.agent.include_cgroups})

    def _on_data(self, events: list[bytes]) -> None:
        self.stats.data += len(events)
        note_pid = self._resources.note_pid
        for pid in {raw[PID_OFFSET:PID_OFFSET + 4] for raw in events}:
            note_pid(int.from_bytes(pid, "little"))
        if self._collector is None:
            # The capture thread only copies: decoding, redaction and Avro run on the emitter's sender thread.
            self._emitter.offer_raw_batch(SOCKET_DATA, events)
            return
        for raw in events:
            try:  # in-collector mode: L7 is parsed here and only spans leave the node
                self._collector.add("socket_data", *self._encoder.record(raw))  # (key, record)
            except Exception as exc:  # one bad event must not stop capture
                self._emitter.count("decode_errors")
                log.debug("in-collector cannot assemble event error=%s", exc)

    def _emit_span(self, span: Span) -> None:
        self.stats.spans += 1
        self._emitter.offer(NODE_SPANS, span.flow_id, span.to_record())

    def _redact(self, stream: tuple[int, ...], payload: bytes, size: int) -> bytes:
        if not payload:  # a byte count only (a message's later syscall): the stream's redactor moves past it
            self._redactors.skip(stream, size)
            return payload
        failures = self._redactors.failures
        payload, masked = self._redactors.redact(stream, payload, size)
        if self._redactors.failures != failures:
            self._emitter.count("redaction_failures")
        if masked:
            self._emitter.count("redacted_regions", masked)
        return payload

    def _on_lifecycle(self, event: LifecycleEvent) -> None:
        try:
            key, record = decode_lifecycle(event, self._host, self._clock)
        except Exception as exc:
            self._emitter.count("decode_errors")
            log.debug("cannot decode lifecycle event error=%s", exc)
            return
        self.stats.lifecycle += 1
        self._emitter.offer(SOCKET_LIFECYCLE, key, record)
        if self._collector is not None:  # a close ends its socket's assembler, as in the stream jobs
            self._collector.add("lifecycle", key, record)

    def stop(self, *_: Any) -> None:
        self._stopping = True

    def run(self, duration_s: float | None = None, on_ready: Callable[[], None] | None = None) -> CaptureStats:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        deadline = time.monotonic() + duration_s if duration_s else None
        quota = self._apply_quota()
        self._resources.start()
        if self.profiles is not None:
            self.profiles.start()
        if on_ready:
            on_ready()
        last_control = last_rescan = time.monotonic()
        last_cpu = time.process_time()
        overflowed = self._emitter.counters["queue_overflow"]
        try:
            while not self._stopping and (deadline is None or time.monotonic() < deadline):
                self._tracer.poll(POLL_TIMEOUT_MS)
                now = time.monotonic()
                if now - last_control >= CONTROL_INTERVAL_S:
                    lost = self._collect_kernel_counters().get("data_lost", 0)
                    cpu = time.process_time()
                    lost += self._emitter.counters["queue_overflow"] - overflowed
                    overflowed = self._emitter.counters["queue_overflow"]
                    self._adapt((cpu - last_cpu) / (now - last_control), lost)
                    if self._collector is not None:
                        self._collector.tick(time.time_ns())
                    self._report_totals()
                    last_control, last_cpu = now, cpu
                if self._tracer.tls is not None and now - last_rescan >= self._tls_rescan_s:
                    self._tracer.tls.rescan()
                    last_rescan = now
            self._tracer.drain()  # what the kernel already wrote, and what its per-CPU batches still hold
            if self._collector is not None:
                self._collector.flush()
            self._resources.stop()
            if self.profiles is not None:
                self.profiles.stop()
            self._collect_kernel_counters()
            self._report_totals()
        finally:
            if quota is not None:
                quota.release()
        self.stats.kernel_counters = dict(self._kernel_seen)
        return self.stats

    def _report_totals(self) -> None:
        """Totals kept in user space, reported in agent-stats as they grow: events held for a predecessor in another
        CPU's batch and predecessors given up; in-collector requests that never became spans."""
        order = self._tracer.order
        totals = {"events_reordered": order.reordered, "order_gaps": order.gaps}
        if self._collector is not None:
            totals.update(requests_cut_by_loss=self._collector.cut_by_loss, requests_open_at_exit=self._collector.abandoned)
        for name, value in totals.items():
            if value > self._reported.get(name, 0):
                self._emitter.count(name, value - self._reported.get(name, 0))
                self._reported[name] = value

    def _apply_quota(self) -> CpuQuota | None:
        if self._cpu_budget is None:
            return None
        try:
            return CpuQuota.apply(self._cpu_budget)
        except BudgetError as exc:  # shedding still keeps to the budget, measured
            log.warning("cpu budget not enforced by a quota, shedding keeps to it error=%s", exc)
            return None

    def _adapt(self, cpu_cores: float, lost: int) -> None:
        """One step of the shedding controller; the kernel takes the new ratio at each flow's next request."""
        before = self._shedding.ratio
        ratio = self._shedding.update(cpu_cores, lost, self._emitter.backlog)
        if ratio != before:
            self._tracer.set_sample_ratio(ratio)
            if abs(ratio - before) >= 0.05 or ratio == 1.0:
                log.info("sample ratio=%.3f was=%.3f cpu_cores=%.2f budget=%s lost=%d backlog=%.2f", ratio, before, cpu_cores,
                         self._cpu_budget, lost, self._emitter.backlog)
        self._emitter.note_sample_ratio(ratio)
        self.stats.min_sample_ratio = min(self.stats.min_sample_ratio, ratio)

    def _collect_kernel_counters(self) -> dict[str, int]:
        """The kernel counters' increase since the last call; losses and shedding are reported in agent-stats."""
        deltas = {}
        for name, value in self._tracer.kernel_counters().items():
            delta = deltas[name] = value - self._kernel_seen.get(name, 0)
            if delta and name in REPORTED_COUNTERS:
                self._emitter.count(name, delta)
            self._kernel_seen[name] = value
        return deltas
