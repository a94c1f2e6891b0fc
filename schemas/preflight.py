"""Start-up checks of Kafka: the brokers answer these settings' credentials and the topics a component
uses exist. Each failure is one error naming what is missing and the fix, so a component stops at
once instead of waiting on a server or a topic that is not there.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from schemas.kafka import client_config
from tracetap.config import KafkaSettings
from tracetap.errors import ConfigError, NotProvisioned, ServerUnavailable

log = logging.getLogger("tracetap.preflight")

CHECK_TIMEOUT_S = 10.0
_SHOWN_TOPICS = 3  # named in the error; the rest are counted


def check_kafka(settings: KafkaSettings, topics: Iterable[str] = (), timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Return once a broker has answered a metadata request and every topic in `topics` exists.

    ConfigError: the brokers refused the credentials or the TLS handshake (waiting does not fix those);
    ServerUnavailable: no broker answered within timeout_s; NotProvisioned: topics are missing."""
    errors: list[KafkaError] = []
    try:
        admin = AdminClient(client_config(settings, error_cb=errors.append, logger=_Silent(), **{"log.connection.close": False}))
    except KafkaException as exc:  # librdkafka checks the files and the key password here
        raise ConfigError("kafka", f"cannot set up a Kafka client: {exc.args[0].str()}") from None
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        try:
            metadata = admin.list_topics(timeout=max(min(1.0, deadline - time.monotonic()), 0.1))
            break
        except KafkaException as exc:
            last = exc.args[0]
        admin.poll(0)  # serves error_cb
        _raise_refusal(settings, errors)
        if time.monotonic() >= deadline:
            seen = [e for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN] or errors
            why = _detail(seen[-1].str()) if seen else (last.str() if last else "no answer")
            raise ServerUnavailable(f"Kafka at {settings.bootstrap_servers} did not answer within {timeout_s:.0f} s ({why}): "
                                    f"is it running (`tracetap stack status` for the local stack), and are kafka.bootstrap_servers "
                                    f"and kafka.security_protocol ({settings.security_protocol}) right?")
    wanted = list(dict.fromkeys(topics))
    missing = [name for name in wanted if name not in metadata.topics]
    if missing:
        shown = ", ".join(missing[:_SHOWN_TOPICS]) + (f" and {len(missing) - _SHOWN_TOPICS} more" if len(missing) > _SHOWN_TOPICS else "")
        hidden = f", or user {settings.sasl_username} may not describe them" if settings.sasl_username else ""
        raise NotProvisioned(f"{len(missing)} of the {len(wanted)} topics this needs do not exist on Kafka at {settings.bootstrap_servers} "
                             f"({shown}{hidden}): run `tracetap topics apply` with the same settings and topics.prefix")
    log.debug("kafka answers servers=%s brokers=%d topics_checked=%d", settings.bootstrap_servers, len(metadata.brokers), len(wanted))


def _raise_refusal(settings: KafkaSettings, errors: list[KafkaError]) -> None:
    for error in errors:
        if error.code() == KafkaError._AUTHENTICATION:
            who = f"user {settings.sasl_username}" if settings.sasl_username else "this client"
            raise ConfigError("kafka.sasl_password", f"Kafka at {settings.bootstrap_servers} refused the credentials of {who} "
                                                     f"({_detail(error.str())}): check kafka.sasl_username, kafka.sasl_mechanism "
                                                     "and TRACETAP_KAFKA__SASL_PASSWORD")
        if error.code() == KafkaError._SSL:
            raise ConfigError("kafka.ssl_ca_location", f"TLS with Kafka at {settings.bootstrap_servers} failed ({_detail(error.str())})")


def _detail(text: str) -> str:
    """librdkafka's error without the broker's name in front or the timing behind."""
    text = re.sub(r"^\S+/(?:bootstrap|\d+): ", "", text)
    return re.sub(r" \(after \d+ms in state \w+\)$", "", text)


class _Silent:
    """librdkafka logs every refused connection; the check says it once, in its error."""

    def log(self, *args: object) -> None:
        pass
