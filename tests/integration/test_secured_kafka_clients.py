"""The three Kafka client libraries tracetap runs (librdkafka, aiokafka under Faust, the Java client under
Flink), each configured only from KafkaSettings through schemas/kafka.py, against a broker that requires
SASL_SSL with SCRAM-SHA-512 on one listener and a client certificate (its key encrypted) on another;
and the start-up check's one clear error for each kind of refusal."""

import asyncio
import subprocess
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from schemas.kafka import aiokafka_auth, client_config, java_properties
from schemas.preflight import check_kafka
from tests.kafka_helpers import read_topic, read_until_idle
from tracetap.errors import ConfigError, NotProvisioned


@pytest.fixture(scope="module", params=["sasl_ssl", "mtls"])
def secured(request, secured_kafka, settings):
    """Settings on one of the secured listeners, and a fresh topic on the broker."""
    env = secured_kafka.env() if request.param == "sasl_ssl" else secured_kafka.mtls_env()
    mine = secured_kafka.settings(settings, env)
    topic = f"{settings.topics.prefix}secured-{request.param}-{uuid.uuid4().hex[:6]}"
    admin = AdminClient(client_config(mine.kafka))
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    return mine, topic


def test_librdkafka_produces_and_consumes(secured):
    settings, topic = secured
    producer = Producer(client_config(settings.kafka))
    for i in range(5):
        producer.produce(topic, f"rd-{i}".encode(), key=b"k")
    assert producer.flush(30) == 0
    assert sorted(m.value().decode() for m in read_topic(settings, topic, 5) if m.value().startswith(b"rd-")) == [f"rd-{i}" for i in range(5)]


def test_aiokafka_produces_and_consumes_in_a_group(secured):
    settings, topic = secured

    async def round_trip():
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_idempotence=True, acks="all",
                                    **aiokafka_auth(settings.kafka))
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(topic, f"aio-{i}".encode(), key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka.bootstrap_servers, group_id=f"g-{uuid.uuid4().hex[:6]}",
                                    auto_offset_reset="earliest", enable_auto_commit=False, **aiokafka_auth(settings.kafka))
        await consumer.start()
        try:
            values = []
            deadline = time.monotonic() + 30
            while sum(v.startswith("aio-") for v in values) < 5 and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=1000)
                values += [m.value.decode() for messages in batch.values() for m in messages]
            await consumer.commit()
            return values
        finally:
            await consumer.stop()

    assert sorted(v for v in asyncio.run(round_trip()) if v.startswith("aio-")) == [f"aio-{i}" for i in range(5)]


def test_the_java_client_produces_with_the_flink_jobs_properties(secured, stack, tmp_path):
    """The Kafka distribution's console producer (the Java client) with exactly the properties the Flink job's
    connector gets; librdkafka reads its records back."""
    settings, topic = secured
    kafka = stack.components[0]
    config = tmp_path / "producer.properties"
    config.write_text("".join(f"{k}={_java_escape(v)}\n" for k, v in java_properties(settings.kafka).items()))
    lines = "".join(f"java-{i}\n" for i in range(5))
    done = subprocess.run([kafka.java, "-cp", f"{kafka.dist / 'libs'}/*", "-Dlog4j.configuration=file:/dev/null", "kafka.tools.ConsoleProducer",
                           "--bootstrap-server", settings.kafka.bootstrap_servers, "--topic", topic, "--producer.config", str(config),
                           "--request-required-acks", "all"], input=lines, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    got = [m.value().decode() for m in read_until_idle(settings, topic, idle_s=2) if m.value().startswith(b"java-")]
    assert sorted(got) == [f"java-{i}" for i in range(5)], done.stderr[-3000:]


def _java_escape(value):
    """A .properties value: backslashes doubled, line breaks as \\n (the PEM key and certificate are inline)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def test_the_start_up_check_passes_and_names_missing_topics(secured):
    settings, topic = secured
    check_kafka(settings.kafka, [topic])
    missing = f"{topic}-not-applied"
    with pytest.raises(NotProvisioned) as error:
        check_kafka(settings.kafka, [topic, missing])
    assert "1 of the 2 topics" in str(error.value) and missing in str(error.value) and "tracetap topics apply" in str(error.value)


def test_a_wrong_password_is_a_config_error_at_once(secured_kafka, settings):
    wrong = secured_kafka.settings(settings, secured_kafka.env(password="not-the-password"))
    started = time.monotonic()
    with pytest.raises(ConfigError) as error:
        check_kafka(wrong.kafka)
    assert time.monotonic() - started < 5  # a refusal is final: no waiting out the timeout
    assert error.value.field == "kafka.sasl_password"
    assert "refused the credentials of user tracetap" in error.value.reason and "SCRAM-SHA-512" in error.value.reason


def test_a_wrong_ca_or_key_password_is_a_config_error(secured_kafka, settings, tmp_path):
    from tests.certs import TestCA

    other_ca = TestCA(tmp_path / "other")
    wrong_ca = secured_kafka.settings(settings, {**secured_kafka.env(), "TRACETAP_KAFKA__SSL_CA_LOCATION": str(other_ca.ca_file)})
    with pytest.raises(ConfigError) as error:
        check_kafka(wrong_ca.kafka)
    assert error.value.field == "kafka.ssl_ca_location" and "certificate verify failed" in error.value.reason
    wrong_key = secured_kafka.settings(settings, secured_kafka.mtls_env(key_password="not-it"))
    with pytest.raises(ConfigError) as error:
        check_kafka(wrong_key.kafka)
    assert "ssl.key" in error.value.reason
