"""The broker version is chosen so every client tracetap uses works against it; aiokafka is Faust's."""

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka.admin import NewTopic


def test_aiokafka_produces_and_consumes_in_a_group(settings, admin):
    topic = f"{settings.topics.prefix}aiokafka-{uuid.uuid4().hex[:6]}"
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)

    async def round_trip():
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            for i in range(10):
                await producer.send_and_wait(topic, f"v{i}".encode(), key=f"k{i % 3}".encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka.bootstrap_servers, group_id=f"g-{uuid.uuid4().hex[:6]}",
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            values = []
            while len(values) < 10:
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), timeout=30)
                values += [m.value.decode() for messages in batch.values() for m in messages]
            await consumer.commit()
            return values
        finally:
            await consumer.stop()

    assert sorted(asyncio.run(round_trip())) == sorted(f"v{i}" for i in range(10))
