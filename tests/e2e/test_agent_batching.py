"""The eBPF agent's batched wakeups: the kernel wakes the reader only every WAKEUP_BYTES per CPU, so an
event on an otherwise idle socket must still reach it through the poll loop's own drain, within 100 ms.
With both kinds of syscall hooks: the raw sys_enter/sys_exit tracepoints and one tracepoint per syscall."""

import subprocess
import sys
import time

import pytest

from producers.ebpf.agent import POLL_TIMEOUT_MS, SocketTracer
from producers.ebpf.events import SYSCALLS, DataEventHeader
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

    def on_data(raw):
        arrivals.append((time.clock_gettime_ns(time.CLOCK_MONOTONIC), DataEventHeader.from_buffer_copy(raw[:DataEventHeader.comm.offset + 16])))

    tracer = SocketTracer(AgentSettings(raw_syscall_hooks=raw_hooks), set(), on_data, lambda event: None)
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
