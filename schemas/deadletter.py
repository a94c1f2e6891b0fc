"""The dead-letter path: a record a component cannot process goes to the dead-letter topic whole,
with the reason, and is counted. Consumers call `DeadLetters.send` and carry on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from schemas.catalog import DEAD_LETTER
from schemas.producer import AvroProducer

log = logging.getLogger("tracetap.deadletter")


class DeadLetters:
    def __init__(self, producer: AvroProducer, component: str) -> None:
        self._producer = producer
        self.component = component
        self.counts: Counter[str] = Counter()

    def send(self, message: Any, reason: str, detail: str) -> None:
        """Dead-letter a confluent_kafka Message with a DeadLetterReason symbol and the error text."""
        _, timestamp_ms = message.timestamp()
        record = dead_letter_record(self.component, reason, detail, message.topic(), message.partition(), message.offset(),
                                    timestamp_ms, message.key(), message.value(), message.headers())
        self.count(reason, detail)
        self._producer.produce(DEAD_LETTER, dead_letter_key(record), record)

    def count(self, reason: str, detail: str) -> None:
        """Count one dead letter; the first of each reason is logged (once per kind, not per record)."""
        if reason not in self.counts:
            log.warning("dead-lettering records component=%s reason=%s first_detail=%r", self.component, reason, detail)
        self.counts[reason] += 1


def dead_letter_record(component: str, reason: str, detail: str, topic: str | None, partition: int | None, offset: int | None,
                       timestamp_ms: int | None, key: str | bytes | None, value: bytes | None,
                       headers: Any = None, exception_type: str | None = None, core_frame: str | None = None) -> dict[str, Any]:
    """A DeadLetter record: the original record whole, where it came from, and why it could not be processed
    (with the exception and the core's frame that raised it, when the core did)."""
    pairs = headers.items() if isinstance(headers, dict) else (headers or [])
    return {
        "time": int(time.time() * 1000),
        "component": component,
        "reason": reason,
        "detail": detail,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "source_timestamp": timestamp_ms if timestamp_ms and timestamp_ms > 0 else None,
        "key": key.encode() if isinstance(key, str) else key,
        "value": value,
        "headers": {k: v or b"" for k, v in pairs},
        "exception_type": exception_type,
        "core_frame": core_frame,
    }


def dead_letter_key(record: dict[str, Any]) -> str:
    return f"{record['source_topic']}|{record['source_partition']}|{record['source_offset']}"
