"""confluent-kafka client configuration from tracetap's settings; every Kafka client is built here."""

from __future__ import annotations

from typing import Any

from tracetap.config import KafkaSettings


def client_config(settings: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """The librdkafka properties for any client: servers, security, then pass-through properties."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol.lower(),
    }
    optional = {
        "sasl.mechanism": settings.sasl_mechanism,
        "sasl.username": settings.sasl_username,
        "sasl.password": settings.sasl_password,
        "ssl.ca.location": settings.ssl_ca_location,
        "ssl.certificate.location": settings.ssl_certificate_location,
        "ssl.key.location": settings.ssl_key_location,
        "ssl.key.password": settings.ssl_key_password,
    }
    conf.update({key: str(value) for key, value in optional.items() if value is not None})
    conf.update(settings.client_properties)
    conf.update(overrides)
    return conf


def producer_config(settings: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """Idempotent, acks=all, compressed and batched: no duplicates or reordering on retry."""
    defaults = {
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 20,
        "batch.num.messages": 10000,
    }
    return client_config(settings, **{**defaults, **overrides})


def consumer_config(settings: KafkaSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """Manual commits after the work is done (at-least-once), read_committed for transactional producers."""
    defaults = {
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    }
    return client_config(settings, **{**defaults, **overrides})
