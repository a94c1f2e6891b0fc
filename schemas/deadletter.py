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
        key = message.key()
        record = {
            "time": int(time.time() * 1000),
            "component": self.component,
            "reason": reason,
            "detail": detail,
            "source_topic": message.topic(),
            "source_partition": message.partition(),
            "source_offset": message.offset(),
            "source_timestamp": timestamp_ms if timestamp_ms > 0 else None,
            "key": key.encode() if isinstance(key, str) else key,
            "value": message.value(),
            "headers": {k: v or b"" for k, v in (message.headers() or [])},
        }
        if reason not in self.counts:
            log.warning("dead-lettering records component=%s reason=%s first_detail=%r", self.component, reason, detail)
        self.counts[reason] += 1
        self._producer.produce(DEAD_LETTER, f"{message.topic()}|{message.partition()}|{message.offset()}", record)
