"""Splitting the kernel's per-CPU batches, and putting each socket's events back in capture order."""

import struct

from producers.ebpf.batches import BATCH_HEADER, FLUSH_BOUND_NS, MAX_HOLD_NS, SocketOrder, split_batch
from producers.ebpf.events import DATA_HEADER_SIZE, DataEventHeader


def event(socket_ino: int, seq: int, payload: bytes = b"", at: int = 0) -> bytes:
    h = DataEventHeader()
    h.socket_ino, h.socket_seq, h.payload_len, h.bytes, h.exit_ns = socket_ino, seq, len(payload), len(payload), at
    return bytes(h)[:DATA_HEADER_SIZE] + payload


def batch(*events: bytes) -> bytes:
    body = b"".join(e + b"\0" * (-len(e) % 8) for e in events)
    return BATCH_HEADER.pack(len(events), len(body)) + body


def test_a_batch_splits_into_its_events_at_8_byte_boundaries():
    events = [event(1, 1, b"GET / HTTP/1.1\r\n"), event(1, 2, b"abc"), event(2, 1)]
    assert split_batch(batch(*events)) == events


def test_a_batch_of_one_without_its_padding_splits_too():
    one = event(1, 1, b"abc")  # the kernel's fallback record: count 1, used = the event's exact size
    assert split_batch(BATCH_HEADER.pack(1, len(one)) + one) == [one]


def test_a_garbled_batch_gives_the_events_that_fit_and_never_raises():
    events = [event(1, 1, b"abc"), event(1, 2, b"defg")]
    record = batch(*events)
    assert split_batch(record[:-8]) == events[:1]  # cut inside the second event
    assert split_batch(struct.pack("<II", 5, 10**6) + record[8:]) == events  # a count and size the bytes do not hold
    assert split_batch(b"\x01\x00") == []
    lying = bytearray(batch(event(1, 1, b"abc")))
    lying[8 + DataEventHeader.payload_len.offset] = 200  # a payload length past the end
    assert split_batch(bytes(lying)) == []


def test_each_socket_is_released_in_seq_order_whatever_order_its_events_arrive_in():
    out = []
    order = SocketOrder(out.append)
    a1, a2, a3, b1, b2 = event(7, 1), event(7, 2), event(7, 3), event(8, 1), event(8, 2)
    for raw in (a2, b1, a3, b2, a1):  # socket 7's first event comes last (another CPU's batch)
        order.add(raw, now_ns=0)
    assert out == [b1, b2, a1, a2, a3]
    assert order.reordered == 2 and order.held == 0 and order.gaps == 0


def test_a_gap_is_given_up_once_a_drain_began_after_the_predecessor_must_have_been_sent():
    out = []
    order = SocketOrder(out.append)
    e1, e2, e3, e4 = event(7, 1, at=1_000), event(7, 2, at=1_500), event(7, 3, at=2_000), event(7, 4, at=3_000)
    order.add(e1, now_ns=0)
    order.add(e3, now_ns=10)  # 2 is missing
    order.expire(drained_from_ns=2_000 + FLUSH_BOUND_NS - 1, now_ns=20)  # 2 may still wait in its CPU's batch
    order.expire(drained_from_ns=None, now_ns=20)  # a drain cut short proves nothing
    assert out == [e1] and order.held == 1
    order.expire(drained_from_ns=2_000 + FLUSH_BOUND_NS, now_ns=30)  # 2 would have been in that drain: lost
    assert out == [e1, e3] and order.gaps == 1
    order.add(e4, now_ns=40)
    order.add(e2, now_ns=50)  # later than the bound after all: delivered as it comes, not held
    assert out == [e1, e3, e4, e2]


def test_nothing_waits_longer_than_the_hold_limit_even_while_the_reader_is_behind():
    out = []
    order = SocketOrder(out.append)
    e1, e3 = event(7, 1, at=1_000), event(7, 3, at=2_000)
    order.add(e1, now_ns=0)
    order.add(e3, now_ns=10)
    order.expire(drained_from_ns=None, now_ns=10 + MAX_HOLD_NS - 1)
    assert out == [e1]
    order.expire(drained_from_ns=None, now_ns=10 + MAX_HOLD_NS)
    assert out == [e1, e3]


def test_events_without_a_seq_pass_straight_through_and_a_restarted_count_is_followed():
    out = []
    order = SocketOrder(out.append)
    marker = event(7, 0)
    order.add(event(7, 1), 0)
    order.add(event(7, 2), 0)
    order.add(marker, 0)
    assert out[-1] == marker
    order.add(event(9, 99_999), 0)  # a new socket far from 1: its count started before ours, nothing to wait for
    assert out[-1] == event(9, 99_999)
    order.add(event(9, 100_000), 0)
    assert out[-1] == event(9, 100_000) and order.held == 0


def test_end_of_capture_releases_everything_held():
    out = []
    order = SocketOrder(out.append)
    order.add(event(7, 3), 0)
    order.add(event(7, 2), 0)
    order.expire(None, 0, everything=True)
    assert out == [event(7, 2), event(7, 3)]
