"""Kafka client configuration from tracetap's settings, for the three client libraries tracetap runs:
librdkafka (confluent-kafka: the agents, the sink, the tools), aiokafka (under the Faust job) and the Java
client (under the Flink job). Every Kafka client is configured here, so one KafkaSettings reaches the same
cluster with the same credentials from each of them.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from tracetap.config import KafkaSettings, Secret
from tracetap.errors import ConfigError

# SASL mechanisms whose credentials are a user name and a password, which the settings hold; GSSAPI and
# OAUTHBEARER need more (keytabs, token endpoints), passed to librdkafka through client_properties.
PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_JAAS_MODULES = {"PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
                 "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
                 "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule"}


# librdkafka ----------------------------------------------------------------------------------------
def client_config(settings: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """The librdkafka properties for any client: servers, security, then pass-through properties."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol.lower(),
    }
    optional = {
        "sasl.mechanism": settings.sasl_mechanism,
        "sasl.username": settings.sasl_username,
        "sasl.password": _plain(settings.sasl_password),
        "ssl.ca.location": settings.ssl_ca_location,
        "ssl.certificate.location": settings.ssl_certificate_location,
        "ssl.key.location": settings.ssl_key_location,
        "ssl.key.password": _plain(settings.ssl_key_password),
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


# aiokafka (Faust) ------------------------------------------------------------------------------------
def aiokafka_auth(settings: KafkaSettings) -> dict[str, Any]:
    """aiokafka's security arguments (AIOKafkaProducer/Consumer keywords). client_properties are librdkafka's
    and are not passed on."""
    protocol = settings.security_protocol.upper()
    auth: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        auth["ssl_context"] = ssl_context(settings)
    if protocol.startswith("SASL_"):
        mechanism = _password_mechanism(settings, "the Faust job (aiokafka)")
        auth.update(sasl_mechanism=mechanism, sasl_plain_username=settings.sasl_username,
                    sasl_plain_password=_plain(settings.sasl_password))
    return auth


def faust_credentials(settings: KafkaSettings) -> Any:
    """faust.App's broker_credentials for the same connection (None for PLAINTEXT); Faust hands them to aiokafka
    as aiokafka_auth gives them."""
    import faust  # only the Faust job needs it

    auth = aiokafka_auth(settings)
    protocol = auth["security_protocol"]
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(auth["ssl_context"])
    return faust.SASLCredentials(username=auth["sasl_plain_username"], password=auth["sasl_plain_password"],
                                 mechanism=auth["sasl_mechanism"], ssl_context=auth.get("ssl_context"))


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    """A TLS client context as librdkafka sets one up: the CA file (else the system's), the hostname checked,
    and the client certificate if one is configured."""
    ca = settings.ssl_ca_location
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("kafka.ssl_ca_location", f"cannot load CA certificates from {ca}: {exc}") from None
    if settings.ssl_certificate_location:
        try:
            context.load_cert_chain(str(settings.ssl_certificate_location), str(settings.ssl_key_location),
                                    _plain(settings.ssl_key_password))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("kafka.ssl_key_location", f"cannot load the client certificate {settings.ssl_certificate_location} "
                                                        f"with its key {settings.ssl_key_location}: {exc} (is ssl_key_password right?)") from None
    return context


# Java (Flink) ------------------------------------------------------------------------------------------
def java_properties(settings: KafkaSettings) -> dict[str, str]:
    """The Java client's properties for the same connection: PEM trust and key stores, a JAAS line for SASL.
    The client key travels inline as unencrypted PKCS#8 (the only PEM key the Java client reads), so these
    properties are as secret as the password they also hold."""
    protocol = settings.security_protocol.upper()
    props = {"bootstrap.servers": settings.bootstrap_servers, "security.protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        if settings.ssl_ca_location:
            props.update({"ssl.truststore.type": "PEM", "ssl.truststore.location": str(settings.ssl_ca_location)})
        if settings.ssl_certificate_location and settings.ssl_key_location:
            props.update({"ssl.keystore.type": "PEM",
                          "ssl.keystore.certificate.chain": _read("kafka.ssl_certificate_location", settings.ssl_certificate_location),
                          "ssl.keystore.key": _pkcs8_key(settings.ssl_key_location, settings.ssl_key_password)})
    if protocol.startswith("SASL_"):
        mechanism = _password_mechanism(settings, "the Flink job (Java client)")
        props["sasl.mechanism"] = mechanism
        props["sasl.jaas.config"] = (f'{_JAAS_MODULES[mechanism]} required username="{_jaas_quote(settings.sasl_username or "")}" '
                                     f'password="{_jaas_quote(_plain(settings.sasl_password) or "")}";')
    # Pass-through properties are librdkafka's; those that are not Java's only draw a warning from the Java client.
    props.update({k: v for k, v in settings.client_properties.items() if "." in k and not k.startswith(("debug", "statistics"))})
    return props


# helpers -------------------------------------------------------------------------------------------------
def _plain(secret: Secret | None) -> str | None:
    return secret.reveal() if secret is not None else None


def _password_mechanism(settings: KafkaSettings, who: str) -> str:
    mechanism = settings.sasl_mechanism or "PLAIN"
    if mechanism not in PASSWORD_MECHANISMS:
        raise ConfigError("kafka.sasl_mechanism", f"{mechanism} is not supported by {who}; use one of {', '.join(PASSWORD_MECHANISMS)}")
    return mechanism


def _jaas_quote(text: str) -> str:
    """A JAAS option value goes in double quotes, where backslash escapes."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _read(field: str, path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(field, f"cannot read {path}: {exc.strerror}") from None


def _pkcs8_key(path: Path, password: Secret | None) -> str:
    from cryptography.hazmat.primitives import serialization

    data = _read("kafka.ssl_key_location", path).encode()
    try:
        key = serialization.load_pem_private_key(data, password.reveal().encode() if password else None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("kafka.ssl_key_location", f"cannot read the private key in {path}: {exc} (is ssl_key_password right?)") from None
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
