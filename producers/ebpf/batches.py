"""The kernel's per-CPU batches (see socket_trace.c, `struct batch`): split into events, and each socket's
events put back in the order the kernel captured them.

A batch is one ring-buffer record: `count`, `used`, then `count` data events, each starting 8-byte aligned.
Batches of different CPUs reach user space in any order (one waits up to BATCH_NS for more events), and a
thread that moves between CPUs spreads one socket's events over several, so the kernel numbers each
socket's captured events (`socket_seq`, 1, 2, 3 ...) and `SocketOrder` releases them in that order. Times
are CLOCK_MONOTONIC nanoseconds, the kernel's clock for the events (bpf_ktime_get_ns).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from producers.ebpf.events import DATA_HEADER_SIZE, EXIT_NS_OFFSET, PAYLOAD_LEN_OFFSET, SOCKET_INO_OFFSET, SOCKET_SEQ_OFFSET

BATCH_HEADER = struct.Struct("<II")  # count, used (bytes of events after this header)
BATCH_NS = 20_000_000  # the longest an event waits in its CPU's batch for more (socket_trace.c BATCH_NS)
FLUSH_HZ = 50  # how often each CPU's flush_stale program sends a batch older than BATCH_NS
# An event's predecessor on its socket was captured before it, so the kernel has sent the predecessor's batch
# within BATCH_NS and a flush tick (two, for margin) of the event's own time, plus a little for the write in
# progress: a drain of the ring that began later than that holds the predecessor, or it was lost.
FLUSH_BOUND_NS = BATCH_NS + 2 * 1_000_000_000 // FLUSH_HZ + 10_000_000
MAX_HOLD_NS = 1_000_000_000  # and however the reader fares, nothing waits longer than this
_SEQ_SPACE = 1 << 32
_FAR = 1 << 16  # a socket_seq this far from the expected one: the kernel's count for the socket restarted


def split_batch(record: bytes) -> list[bytes]:
    """The events of one batch record. Stops at the first event that does not fit what the header says."""
    if len(record) < BATCH_HEADER.size:
        return []
    count, used = BATCH_HEADER.unpack_from(record)
    end = min(len(record), BATCH_HEADER.size + used)
    events = []
    at = BATCH_HEADER.size
    for _ in range(count):
        if at + DATA_HEADER_SIZE > end:
            break
        stop = at + DATA_HEADER_SIZE + int.from_bytes(record[at + PAYLOAD_LEN_OFFSET:at + PAYLOAD_LEN_OFFSET + 4], "little")
        if stop > end:
            break
        events.append(record[at:stop])
        at = (stop + 7) & ~7
    return events


class SocketOrder:
    """Releases each socket's events in socket_seq order: an event whose predecessor has not arrived is held
    until it does, or until a drain of the ring that began FLUSH_BOUND_NS after the held event's capture
    (then the predecessor was lost; the gap is given up and counted). Events without a socket_seq (0: the
    kernel had no room to number them, loss markers) pass straight through."""

    def __init__(self, deliver: Callable[[bytes], None], max_sockets: int = 131_072) -> None:
        self._deliver = deliver
        self._max_sockets = max_sockets
        self._next: dict[int, int] = {}  # socket inode -> the socket_seq it waits for
        self._held: dict[int, dict[int, bytes]] = {}  # socket inode -> socket_seq -> event
        self._held_since: dict[int, tuple[int, int]] = {}  # socket inode -> (earliest capture time held, when it arrived)
        self.reordered = 0  # events held for a predecessor that came later
        self.gaps = 0  # predecessors given up (lost in the kernel, or later than the bound)

    def add(self, raw: bytes, now_ns: int) -> None:
        seq = int.from_bytes(raw[SOCKET_SEQ_OFFSET:SOCKET_SEQ_OFFSET + 4], "little")
        if not seq:
            self._deliver(raw)
            return
        socket = int.from_bytes(raw[SOCKET_INO_OFFSET:SOCKET_INO_OFFSET + 8], "little")
        expected = self._next.get(socket, 1)
        if seq == expected:
            self._deliver(raw)
            self._advance(socket, seq)
            return
        ahead = (seq - expected) % _SEQ_SPACE
        if ahead < _FAR:
            captured = int.from_bytes(raw[EXIT_NS_OFFSET:EXIT_NS_OFFSET + 8], "little")
            held = self._held.get(socket)
            if held is None:
                held = self._held[socket] = {}
                self._held_since[socket] = (captured, now_ns)
            elif captured < self._held_since[socket][0]:
                self._held_since[socket] = (captured, self._held_since[socket][1])
            held[seq] = raw
            self.reordered += 1
            return
        self._deliver(raw)  # late (its gap was given up), or a new count for the socket
        if ahead < _SEQ_SPACE - _FAR:
            self._advance(socket, seq)

    def expire(self, drained_from_ns: int | None, now_ns: int, everything: bool = False) -> None:
        """Give up the gaps that can no longer fill: `drained_from_ns` is when the drain that just emptied the
        ring began (None: it was cut short, a backlog is left); `everything` at the end of capture."""
        for socket, (captured, arrived) in list(self._held_since.items()):
            if (everything or now_ns - arrived >= MAX_HOLD_NS
                    or (drained_from_ns is not None and captured + FLUSH_BOUND_NS <= drained_from_ns)):
                held = self._held.pop(socket)
                del self._held_since[socket]
                self.gaps += 1
                last = 0
                for seq in sorted(held, key=lambda s: (s - self._next.get(socket, 1)) % _SEQ_SPACE):
                    self._deliver(held[seq])
                    last = seq
                self._advance(socket, last)

    def _advance(self, socket: int, seq: int) -> None:
        following = (seq + 1) % _SEQ_SPACE or 1
        held = self._held.get(socket)
        while held and following in held:
            self._deliver(held.pop(following))
            following = (following + 1) % _SEQ_SPACE or 1
        if held is not None and not held:
            del self._held[socket]
            del self._held_since[socket]
        if socket not in self._next and len(self._next) >= self._max_sockets:
            for old in list(self._next)[: self._max_sockets // 8]:  # the oldest eighth (dicts keep insertion order)
                if old not in self._held:
                    del self._next[old]
        self._next[socket] = following

    @property
    def held(self) -> int:
        return sum(len(h) for h in self._held.values())
