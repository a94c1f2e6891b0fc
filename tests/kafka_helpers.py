"""Reading topics back in tests: a fresh consumer group from the beginning, until n records or a deadline."""

import time
import uuid

from confluent_kafka import Consumer

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


def read_until_idle(settings, topic, idle_s=3.0, timeout_s=60.0):
    """Every record on a topic, read from the beginning until nothing new arrives for idle_s. The idle
    clock starts once the group has its partitions: on a fresh broker the first group takes seconds."""
    consumer = Consumer(consumer_config(settings.kafka, f"test-{uuid.uuid4().hex[:8]}"))
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
