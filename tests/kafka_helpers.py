"""Reading topics back in tests: a fresh consumer group from the beginning, until n records or a deadline."""

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from schemas.kafka import consumer_config


def read_topic(settings, topic, count, timeout_s=30.0):
    consumer = Consumer(consumer_config(settings.kafka, f"test-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([topic])
    messages = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < count and time.monotonic() < deadline:
            for message in consumer.consume(count - len(messages), timeout=0.5):
                if message.error() is None:
                    messages.append(message)
    finally:
        consumer.close()
    return messages


def read_until_idle(settings, topic, idle_s=3.0, timeout_s=60.0, isolation=None):
    """Every record on a topic, read from the beginning until nothing new arrives for idle_s. The idle
    clock starts once the group has its partitions: on a fresh broker the first group takes seconds.
    `isolation`: "read_uncommitted" also gives what open and aborted transactions wrote."""
    config = consumer_config(settings.kafka, f"test-{uuid.uuid4().hex[:8]}")
    if isolation is not None:
        config["isolation.level"] = isolation
    consumer = Consumer(config)
    assigned = []
    consumer.subscribe([topic], on_assign=lambda c, partitions: assigned.append(time.monotonic()))
    messages = []
    deadline = time.monotonic() + timeout_s
    last = None
    try:
        while time.monotonic() < deadline and (last is None or time.monotonic() - last < idle_s):
            batch = [m for m in consumer.consume(1000, timeout=0.5) if m.error() is None]
            if batch:
                messages += batch
                last = time.monotonic()
            elif last is None and assigned:
                last = assigned[0]
    finally:
        consumer.close()
    return messages


def read_to_end(settings, topic, timeout_s=60.0):
    """Every record on a topic up to the end offsets it has now, from the beginning: a copy of a topic that
    a loaded machine cannot cut short (reading until idle can)."""
    consumer = Consumer(consumer_config(settings.kafka, f"test-{uuid.uuid4().hex[:8]}"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}
        left = {p: high for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in left])
        messages = []
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is not None:
                    continue
                messages.append(message)
                if message.offset() + 1 >= left.get(message.partition(), 0):
                    left.pop(message.partition(), None)
        assert not left, f"{topic}: partitions {sorted(left)} not read to their end in {timeout_s} s"
    finally:
        consumer.close()
    return messages
