"""The kernel's per-CPU batches (see socket_trace.c, `struct batch`): split into events, and each socket's
events put back in the order the kernel captured them.

A batch is one ring-buffer record: `count`, `used`, then `count` data events, each starting 8-byte aligned.
Batches of different CPUs reach user space in any order (one waits up to BATCH_NS for more events), and a
thread that moves between CPUs spreads one socket's events over several, so the kernel numbers each
socket's captured events (`socket_seq`, 1, 2, 3 ...) and `SocketOrder` releases them in that order.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from producers.ebpf.events import DATA_HEADER_SIZE, PAYLOAD_LEN_OFFSET, SOCKET_INO_OFFSET, SOCKET_SEQ_OFFSET

BATCH_HEADER = struct.Struct("<II")  # count, used (bytes of events after this header)
BATCH_NS = 20_000_000  # the longest an event waits in its CPU's batch for more (socket_trace.c BATCH_NS)
FLUSH_HZ = 50  # how often each CPU's flush_stale program sends a batch older than BATCH_NS
# How long a socket's event may wait for its predecessor: that one is in another CPU's batch, sent within
# BATCH_NS plus a flush tick, or it was lost (the kernel counts it). Then the gap is given up.
HOLD_NS = BATCH_NS + 1_000_000_000 // FLUSH_HZ + 30_000_000
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
    until it does, or for HOLD_NS at most (then the gap is given up and counted). Events without a
    socket_seq (0: the kernel had no room to number them, loss markers) pass straight through."""

    def __init__(self, deliver: Callable[[bytes], None], hold_ns: int = HOLD_NS, max_sockets: int = 131_072) -> None:
        self._deliver = deliver
        self._hold_ns = hold_ns
        self._max_sockets = max_sockets
        self._next: dict[int, int] = {}  # socket inode -> the socket_seq it waits for
        self._held: dict[int, dict[int, bytes]] = {}  # socket inode -> socket_seq -> event
        self._held_since: dict[int, int] = {}  # socket inode -> when its oldest held event arrived
        self.reordered = 0  # events held for a predecessor that came later
        self.gaps = 0  # predecessors given up (lost in the kernel, or later than HOLD_NS)

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
            held = self._held.get(socket)
            if held is None:
                held = self._held[socket] = {}
                self._held_since[socket] = now_ns
            held[seq] = raw
            self.reordered += 1
            return
        self._deliver(raw)  # late (its gap was given up), or a new count for the socket
        if ahead < _SEQ_SPACE - _FAR:
            self._advance(socket, seq)

    def expire(self, now_ns: int, everything: bool = False) -> None:
        """Give up the gaps of sockets whose events have waited HOLD_NS (all of them: at the end of capture)."""
        for socket, since in list(self._held_since.items()):
            if everything or now_ns - since >= self._hold_ns:
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
