"""The Faust worker's offset guard (streams/faust_app.py): a partition's records reach the agents in offset
order; a record Faust skipped is read again by seeking back, and offsets that hold no record (transaction
markers, compaction) are let through once the re-read shows it. The consumer is a stand-in that records
seeks: the guard's decisions are pure logic."""

import asyncio
from types import SimpleNamespace

from faust.types import TP as TopicPartition

from streams.faust_app import WorkerStats, _OffsetGuard

TP = TopicPartition("raw.socket-data", 3)


class _Consumer:
    def __init__(self):
        self.seeks = []

    async def seek(self, tp, offset):
        self.seeks.append((tp.partition, offset))


def _run(offsets):
    stats, consumer = WorkerStats(), _Consumer()
    guard = _OffsetGuard(SimpleNamespace(consumer=consumer), stats)

    async def feed():
        return [o for o in offsets if await guard.admit(SimpleNamespace(message=SimpleNamespace(tp=TP, offset=o)))]

    return asyncio.run(feed()), consumer.seeks, stats.offset_gaps


def test_records_in_order_all_pass_without_a_seek():
    assert _run([5, 6, 7, 8]) == ([5, 6, 7, 8], [], 0)


def test_a_skipped_record_is_read_again_and_what_came_past_it_waits_for_the_re_read():
    # 67 never came: 68 and 69 are dropped, the partition is sought back to 67, and the re-read gives 67 on
    admitted, seeks, gaps = _run([65, 66, 68, 69, 67, 68, 69, 70])
    assert admitted == [65, 66, 67, 68, 69, 70]
    assert seeks == [(3, 67)] and gaps == 1


def test_offsets_without_records_pass_once_the_re_read_shows_the_same_next_record():
    # a transaction marker at 12: the re-read from 12 gives 13 again, so 13 is the next record
    admitted, seeks, gaps = _run([10, 11, 13, 14, 13, 14, 15])
    assert admitted == [10, 11, 13, 14, 15]
    assert seeks == [(3, 12)] and gaps == 1


def test_a_gap_whose_records_never_come_back_is_sought_again_without_new_records(monkeypatch):
    # 68 was the partition's last record: nothing more comes to prompt a second seek, so the timer's retry does
    stats, consumer = WorkerStats(), _Consumer()
    guard = _OffsetGuard(SimpleNamespace(consumer=consumer), stats)
    clock = [100.0]
    monkeypatch.setattr("streams.faust_app.time.monotonic", lambda: clock[0])

    async def run():
        admitted = [o for o in (65, 66, 68) if await guard.admit(SimpleNamespace(message=SimpleNamespace(tp=TP, offset=o)))]
        await guard.retry()  # too soon
        clock[0] += 1.5
        await guard.retry()
        return admitted

    assert asyncio.run(run()) == [65, 66]
    assert consumer.seeks == [(3, 67), (3, 67)]
