"""The Faust worker's offset guard reads the records Faust skipped from the real broker: the same key, value,
headers and timestamp as the producer wrote, and nothing for the offsets a transaction's marker takes."""

import asyncio
import time
import uuid
from types import SimpleNamespace

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from faust.types import TP

from schemas.kafka import client_config
from streams.faust_app import WorkerStats
from streams.faust_gaps import OffsetGuard, Refilled
from tests.kafka_helpers import read_to_end


def test_the_guard_reads_the_skipped_records_from_kafka_and_skips_transaction_markers(settings, admin):
    topic = f"{settings.topics.prefix}gaps-{uuid.uuid4().hex[:6]}"
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    transactional = Producer(client_config(settings.kafka, **{"transactional.id": f"gaps-{uuid.uuid4().hex[:6]}"}))
    transactional.init_transactions(30)
    transactional.begin_transaction()
    for i in range(3):  # offsets 0..2, the commit marker takes 3
        transactional.produce(topic, f"t{i}".encode(), f"k{i}".encode(), partition=0, timestamp=1_700_000_000_000 + i)
    transactional.commit_transaction(30)
    # the coordinator writes the commit marker after it answers: wait for it (offset 3) before the next records
    watermark = Consumer(client_config(settings.kafka, **{"group.id": f"gaps-{uuid.uuid4().hex[:6]}"}))
    deadline = time.monotonic() + 30
    while watermark.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1] < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    watermark.close()
    plain = Producer(client_config(settings.kafka))
    for i in range(4, 8):  # offsets 4..7
        plain.produce(topic, f"p{i}".encode(), f"k{i}".encode(), partition=0, timestamp=1_700_000_000_000 + i, headers=[("h", f"{i}".encode())])
    assert plain.flush(30) == 0

    written = {m.value(): m.offset() for m in read_to_end(settings, topic)}  # the layout, read independently
    assert written[b"p4"] > written[b"t2"] + 1, "the commit marker takes an offset between the transaction and the rest"

    stats = WorkerStats()
    guard = OffsetGuard(settings.kafka, f"gaps-{uuid.uuid4().hex[:6]}", stats, lambda tp: None)
    tp = TP(topic, 0)

    async def feed(offsets):
        out = []
        for o in offsets:
            out += await guard.admit(SimpleNamespace(message=SimpleNamespace(tp=tp, offset=o)))
        return out

    # Faust delivered t0, t2, p4 and p7: t1, p5 and p6 come from the guard's own read, the marker gives nothing
    admitted = asyncio.run(feed([written[v] for v in (b"t0", b"t2", b"p4", b"p7")]))
    assert [e.message.offset for e in admitted] == sorted(written.values())
    refilled = [e.message for e in admitted if isinstance(e, Refilled)]
    assert [(m.key, m.value, m.timestamp, m.partition, m.topic) for m in refilled] == [
        (b"k1", b"t1", 1_700_000_000.001, 0, topic), (b"k5", b"p5", 1_700_000_000.005, 0, topic), (b"k6", b"p6", 1_700_000_000.006, 0, topic)]
    assert [list(m.headers) for m in refilled[1:]] == [[("h", b"5")], [("h", b"6")]]
    assert stats.offset_gaps == 2 and stats.offset_gaps_unfilled == 0  # t1 and p5..p6; the marker's gap held nothing
