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
