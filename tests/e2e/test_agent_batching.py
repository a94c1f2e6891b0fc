"""The eBPF agent's batches: the kernel writes data events into per-CPU batches and wakes the reader only
every WAKEUP_BYTES per CPU, so an event on an otherwise idle socket must still reach the reader (the
batch's perf-event flush, then the poll loop's own drain) within 100 ms; and a socket whose thread moves
between CPUs must still give its events in order, each once. With both kinds of syscall hooks: the raw
sys_enter/sys_exit tracepoints and one tracepoint per syscall."""

import os
import subprocess
import sys
import time

import pytest

from producers.ebpf.agent import POLL_TIMEOUT_MS, SocketTracer
from producers.ebpf.events import DATA_HEADER_SIZE, SYSCALLS, DataEventHeader
from tracetap.config import AgentSettings

SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(b"ping", ("127.0.0.1", int(sys.argv[1])))
    time.sleep(0.3)
"""


@pytest.mark.parametrize("raw_hooks", [True, False], ids=["raw-tracepoints", "per-syscall-tracepoints"])
def test_an_event_on_an_idle_socket_reaches_the_reader_within_100_ms(raw_hooks):
    arrivals = []

    def on_data(events):
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        arrivals.extend((now, DataEventHeader.from_buffer_copy(raw[:DataEventHeader.comm.offset + 16])) for raw in events)

    tracer = SocketTracer(AgentSettings(raw_syscall_hooks=raw_hooks, unknown_protocol_payloads=True), set(), on_data, lambda event: None)
    sender = subprocess.Popen([sys.executable, "-c", SENDER, "9"])  # the discard port: nothing answers, nothing else is sent
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sender.poll() is None:
            tracer.poll(POLL_TIMEOUT_MS)
        tracer.poll(POLL_TIMEOUT_MS)
    finally:
        sender.kill()
        sender.wait()
        tracer.close()
    sent = [(arrived, h) for arrived, h in arrivals if h.pid == sender.pid and h.rport == 9]
    assert [(SYSCALLS[h.syscall], h.bytes, h.payload_len) for _, h in sent] == [("SENDTO", 4, 4)] * 5
    delays_ms = [(arrived - h.exit_ns) / 1e6 for arrived, h in sent]
    assert max(delays_ms) < 100, delays_ms


HOPPER = """
import os, socket, sys
cpus = sorted(os.sched_getaffinity(0))
a, b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0)); a.connect(b.getsockname()); b.connect(a.getsockname())
for i in range(int(sys.argv[1])):
    os.sched_setaffinity(0, {cpus[i % len(cpus)]})  # each write from the next CPU: consecutive events in different batches
    a.send(b"%06d" % i)
    b.recv(64)
"""


@pytest.mark.parametrize("raw_hooks", [True, False], ids=["raw-tracepoints", "per-syscall-tracepoints"])
def test_a_socket_whose_thread_moves_between_cpus_gives_its_events_in_order(raw_hooks):
    assert len(os.sched_getaffinity(0)) >= 2, "this test needs two CPUs to move the writer between"
    events = []
    tracer = SocketTracer(AgentSettings(raw_syscall_hooks=raw_hooks, unknown_protocol_payloads=True), set(), events.extend, lambda event: None)
    writes = 2000
    hopper = subprocess.Popen([sys.executable, "-c", HOPPER, str(writes)])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and hopper.poll() is None:
            tracer.poll(POLL_TIMEOUT_MS)
        tracer.drain()
    finally:
        hopper.kill()
        hopper.wait()
        tracer.close()
    assert hopper.returncode == 0
    sent = [raw for raw in events if DataEventHeader.from_buffer_copy(raw[:DATA_HEADER_SIZE]).pid == hopper.pid]
    headers = [DataEventHeader.from_buffer_copy(raw[:DATA_HEADER_SIZE]) for raw in sent]
    writer = [raw[DATA_HEADER_SIZE:] for raw, h in zip(sent, headers) if SYSCALLS[h.syscall] == "SENDTO"]
    assert writer == [b"%06d" % i for i in range(writes)]  # each write once, in the order it was made
    for socket_ino in {h.socket_ino for h in headers}:
        seqs = [h.socket_seq for h in headers if h.socket_ino == socket_ino]
        assert seqs == list(range(1, len(seqs) + 1))
