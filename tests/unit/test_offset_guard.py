"""The Faust worker's offset guard (streams/faust_gaps.py): a partition's records reach the agents in offset
order; the records Faust skipped are read again and come before the record that showed the gap. A partition whose last records
never come is sought back. The read and the seek are stand-ins here (tests/integration/test_faust_offset_gaps.py reads real Kafka): these are the
guard's decisions."""

import asyncio
from types import SimpleNamespace

from faust.types import TP as TopicPartition

from streams.faust_app import WorkerStats
from streams.faust_gaps import OffsetGuard, Refilled
from tracetap.config import KafkaSettings

TP = TopicPartition("raw.socket-data", 3)


def _guard(partition_offsets, committed=None):
    """A guard whose reads return the offsets the partition holds (a gap may hold none: transaction markers)."""
    stats = WorkerStats()
    guard = OffsetGuard(KafkaSettings(), "app", stats, lambda tp: committed)
    reads = []

    def read(tp, start, end):
        reads.append((tp.partition, start, end))
        return [Refilled(SimpleNamespace(tp=tp, offset=o)) for o in partition_offsets if start <= o < end]

    guard._read = read
    return guard, reads, stats


def _event(offset):
    return SimpleNamespace(message=SimpleNamespace(tp=TP, offset=offset))


def _feed(guard, offsets):
    async def feed():
        admitted = []
        for o in offsets:
            admitted += [(type(e).__name__, e.message.offset) for e in await guard.admit(_event(o))]
        return admitted

    return asyncio.run(feed())


def test_records_in_order_pass_without_a_read():
    guard, reads, stats = _guard(range(100))
    assert _feed(guard, [5, 6, 7, 8]) == [("SimpleNamespace", o) for o in (5, 6, 7, 8)]
    assert reads == [] and stats.offset_gaps == 0


def test_skipped_records_are_read_and_come_before_the_record_that_showed_the_gap():
    guard, reads, stats = _guard(range(100))
    assert _feed(guard, [65, 66, 69, 70]) == [("SimpleNamespace", 65), ("SimpleNamespace", 66), ("Refilled", 67), ("Refilled", 68),
                                              ("SimpleNamespace", 69), ("SimpleNamespace", 70)]
    assert reads == [(3, 67, 69)] and stats.offset_gaps == 1


def test_a_gap_without_records_is_not_counted():
    guard, reads, stats = _guard([10, 11, 13, 14])  # a transaction marker at 12
    assert [o for _, o in _feed(guard, [10, 11, 13, 14])] == [10, 11, 13, 14]
    assert reads == [(3, 12, 13)] and stats.offset_gaps == 0


def test_a_record_delivered_again_is_dropped_and_counted_as_replayed_and_the_first_record_is_never_a_gap():
    guard, reads, stats = _guard(range(100))
    assert [o for _, o in _feed(guard, [40, 41, 42, 41, 42, 43])] == [40, 41, 42, 43]
    assert reads == [] and stats.replayed == 2


def test_after_a_rebalance_a_partition_starts_where_its_first_record_says():
    guard, reads, stats = _guard(range(100))
    _feed(guard, [1, 2])
    guard.forget()
    assert [o for _, o in _feed(guard, [50, 51])] == [50, 51]
    assert reads == []


def test_records_an_earlier_worker_finished_are_not_read_again():
    # after a restart Faust delivered 30..32 from before the group's committed offset 45, then sought to it:
    # 33..44 were finished by the worker before; only what lies past the committed offset is missing
    guard, reads, stats = _guard(range(100), committed=45)
    assert [o for _, o in _feed(guard, [30, 31, 32, 45, 46])] == [30, 31, 32, 45, 46]
    assert reads == [] and stats.offset_gaps == 0
    guard, reads, stats = _guard(range(100), committed=45)
    assert [o for _, o in _feed(guard, [30, 31, 32, 47])] == [30, 31, 32, 45, 46, 47]
    assert reads == [(3, 45, 47)] and stats.offset_gaps == 1


def test_when_no_record_comes_for_a_while_a_partition_with_records_left_is_sought_back(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("streams.faust_gaps.time.monotonic", lambda: clock[0])
    guard, reads, stats = _guard(range(100))
    quiet, other = TP, TopicPartition("raw.socket-data", 4)
    left = {quiet: 5, other: 0}
    seeks = []

    async def seek(tp, offset):
        seeks.append((tp.partition, offset))

    async def tick(seconds):
        clock[0] += seconds
        await guard.seek_quiet_ends([quiet, other], left.get, seek)

    async def run():
        await guard.admit(_event(10))
        await tick(5)  # recovery not over: Faust seeks every partition itself then
        guard.ready()
        await tick(2)
        await guard.admit(SimpleNamespace(message=SimpleNamespace(tp=other, offset=7)))  # records still come
        await tick(2.9)
        assert seeks == []
        left[other] = 1  # a record just written to a partition: not stuck yet
        await tick(0.2)  # nothing came for 3 s and a partition's records left stayed the same: its end was skipped
        assert seeks == [(3, 11)]
        left[other] = 0
        await tick(1)
        await tick(2.1)  # still nothing: sought again, counted once
        assert seeks == [(3, 11), (3, 11)]
        await guard.admit(_event(11))
        left[quiet] = 0
        await tick(10)
        assert seeks == [(3, 11), (3, 11)]

    asyncio.run(run())
    assert stats.offset_gaps == 1
